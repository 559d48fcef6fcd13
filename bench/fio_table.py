#!/usr/bin/env python3
"""Summarise fio JSON results of bench/nbd-vs-nbdkit.sh and bench/replicated.sh
(stdlib only).

  fio_table.py table RESULTS_DIR
      Print a markdown table comparing tandem with nbdkit. Reads
      RESULTS_DIR/WORKLOAD-tandem.json and RESULTS_DIR/WORKLOAD-nbdkit.json
      for each workload, plus RESULTS_DIR/meta.json if present (workload
      order and machine details written by the shell script).

  fio_table.py multi RESULTS_DIR
      Print a markdown table with one row per workload per configuration
      (bench/replicated.sh). RESULTS_DIR/meta.json lists the workloads, the
      configurations ("servers": [{"id", "label"}]) and the baseline id; each
      result is RESULTS_DIR/WORKLOAD-ID.json. A configuration that could not
      run has RESULTS_DIR/ID.skipped (its text is shown in its rows) instead.
      Each row has its ratio to the baseline's run of the same workload.

  fio_table.py best OUT IN [IN ...]
      Copy whichever of the IN files has the highest IOPS to OUT (used to keep
      the best of BENCH_REPS runs).
"""

import json
import math
import os
import platform
import shutil
import sys

SERVERS = ("tandem", "nbdkit")
RATIO_TARGET = 0.9
READ_RW = {"read", "randread"}
WRITE_RW = {"write", "randwrite"}


def load_fio_json(path):
    """Load fio's JSON output, tolerating stray text printed before it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.find("{")
    if start < 0:
        raise ValueError(f"{path}: no JSON object in fio output")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def job_option(data, job, key):
    value = job.get("job options", {}).get(key)
    if value is None:
        value = data.get("global options", {}).get(key)
    return value


def summarise(data):
    """Return the numbers for the table from one fio result."""
    job = data["jobs"][0]  # one group thanks to --group_reporting
    if job.get("error"):
        raise ValueError(f"fio job reported error {job['error']}")
    rw = job_option(data, job, "rw")
    if rw in READ_RW:
        ddir = "read"
    elif rw in WRITE_RW:
        ddir = "write"
    else:  # mixed workload: report the busier direction
        ddir = max(("read", "write"), key=lambda d: job[d]["total_ios"])
    stats = job[ddir]
    lat = stats.get("clat_ns") or stats.get("lat_ns") or {}
    if not lat.get("N"):
        lat = stats.get("lat_ns") or lat
    pct = lat.get("percentile") or {}
    p99 = pct.get("99.000000")
    sync = job.get("sync") or {}
    sync_lat = sync.get("lat_ns") or {}
    return {
        "ddir": ddir,
        "iops": float(stats["iops"]),
        "mean_us": lat["mean"] / 1000.0 if lat.get("N") else None,
        "p99_us": p99 / 1000.0 if p99 is not None else None,
        "sync_ios": sync.get("total_ios", 0),
        "sync_mean_us": sync_lat["mean"] / 1000.0 if sync_lat.get("N") else None,
        "sync_p99_us": (sync_lat.get("percentile") or {}).get("99.000000"),
        "fio_version": data.get("fio version"),
    }


def fmt_iops(v):
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_us(v):
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def fmt_ratio(t, n):
    if t is None or n is None or n == 0:
        return "n/a"
    r = t / n
    # Truncate rather than round, so a ratio marked as below target never
    # displays as "0.90".
    text = f"{math.floor(r * 100) / 100:.2f}"
    if r < RATIO_TARGET:
        text += f" (below {RATIO_TARGET} target)"
    return text


def cmd_best(out, inputs):
    best_path, best_iops = None, -1.0
    for path in inputs:
        iops = summarise(load_fio_json(path))["iops"]
        if iops > best_iops:
            best_path, best_iops = path, iops
    if best_path is None:
        sys.exit("fio_table.py best: no input files")
    shutil.copyfile(best_path, out)


def discover_workloads(results_dir):
    names = set()
    for entry in os.listdir(results_dir):
        for server in SERVERS:
            suffix = f"-{server}.json"
            if entry.endswith(suffix):
                names.add(entry[: -len(suffix)])
    return sorted(names)


def cmd_table(results_dir):
    meta = {}
    meta_path = os.path.join(results_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    workloads = meta.get("workloads") or discover_workloads(results_dir)

    rows, problems, fio_versions, sync_notes = [], [], set(), []
    for name in workloads:
        res = {}
        for server in SERVERS:
            path = os.path.join(results_dir, f"{name}-{server}.json")
            try:
                res[server] = summarise(load_fio_json(path))
                if res[server]["fio_version"]:
                    fio_versions.add(res[server]["fio_version"])
            except (OSError, ValueError, KeyError, IndexError) as e:
                res[server] = None
                problems.append(f"{name}/{server}: {e}")
        t, n = res["tandem"], res["nbdkit"]

        def get(r, key):
            return None if r is None else r[key]

        rows.append([
            name,
            fmt_iops(get(t, "iops")),
            fmt_iops(get(n, "iops")),
            fmt_ratio(get(t, "iops"), get(n, "iops")),
            fmt_us(get(t, "mean_us")),
            fmt_us(get(n, "mean_us")),
            fmt_us(get(t, "p99_us")),
            fmt_us(get(n, "p99_us")),
        ])
        if get(t, "sync_ios") or get(n, "sync_ios"):
            sync_notes.append(
                f"{name}: write latency excludes the flush after each write; "
                f"flush mean latency tandem {fmt_us(get(t, 'sync_mean_us'))} µs, "
                f"nbdkit {fmt_us(get(n, 'sync_mean_us'))} µs"
            )

    nproc = meta.get("nproc") or len(os.sched_getaffinity(0))
    kernel = meta.get("kernel") or platform.release()
    fio_version = ", ".join(sorted(fio_versions)) or "unknown fio"
    line = f"Machine: {nproc} CPUs (nproc), kernel {kernel}; {fio_version}"
    if meta.get("nbdkit"):
        line += f"; {meta['nbdkit']}"
    if meta:
        line += (f"; size {meta.get('size')} ({meta.get('export_bytes')} bytes used), "
                 f"{meta.get('runtime_s')} s per run, best of {meta.get('reps')}")
    print(line)
    if meta.get("fake_tandem"):
        print("SELF-TEST (BENCH_FAKE_TANDEM=1): the 'tandem' columns are a second nbdkit, not tandem.")
    print()

    header = ["workload", "tandem IOPS", "nbdkit IOPS", "ratio (tandem/nbdkit IOPS)",
              "tandem mean lat (µs)", "nbdkit mean lat (µs)",
              "tandem p99 (µs)", "nbdkit p99 (µs)"]
    right = [False] + [True] * (len(header) - 1)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def render(cells):
        out = []
        for cell, w, r in zip(cells, widths, right):
            out.append(cell.rjust(w) if r else cell.ljust(w))
        return "| " + " | ".join(out) + " |"

    print(render(header))
    print("|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                         for w, r in zip(widths, right)) + "|")
    for row in rows:
        print(render(row))

    if sync_notes:
        print()
        for note in sync_notes:
            print(f"- {note}")
    print()
    print("Latency is fio's completion latency (clat); IOPS count writes for write "
          "workloads and reads for the read workload.")
    if problems:
        print()
        for p in problems:
            print(f"- missing/unusable result: {p}")
        return 1
    return 0


# Targets of issue 4 for the replicated configurations, relative to the
# baseline: (what is compared, comparison, bound).
MULTI_TARGETS = {
    "randwrite-4k-qd1-fsync": ("lat", "<=", 1.3),
    "randwrite-4k-qd32": ("iops", ">=", 0.45),
    "seqwrite-1m-qd8": ("iops", ">=", 0.45),
    "randread-4k-qd32": ("iops", ">=", 0.95),
}


def cycle_lat_us(r):
    """Mean latency of one operation as the client waits for it: the write or
    read, plus the flush after it when the workload flushes after each write."""
    if r is None or r["mean_us"] is None:
        return None
    if r["sync_ios"]:
        if r["sync_mean_us"] is None:
            return None
        return r["mean_us"] + r["sync_mean_us"]
    return r["mean_us"]


def plain_ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def cmd_multi(results_dir):
    with open(os.path.join(results_dir, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    workloads = meta["workloads"]
    servers = meta["servers"]
    base = meta["baseline"]

    def skipped(sid):
        path = os.path.join(results_dir, f"{sid}.skipped")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return " ".join(f.read().split()) or "skipped"
        return None

    def load(name, sid):
        path = os.path.join(results_dir, f"{name}-{sid}.json")
        try:
            r = summarise(load_fio_json(path))
            if r["fio_version"]:
                fio_versions.add(r["fio_version"])
            return r
        except (OSError, ValueError, KeyError, IndexError) as e:
            problems.append(f"{name}/{sid}: {e}")
            return None

    rows, problems, fio_versions = [], [], set()
    for name in workloads:
        b = load(name, base) if not skipped(base) else None
        for s in servers:
            sid, label = s["id"], s["label"]
            why = skipped(sid)
            if why:
                rows.append([name, label, why, "", "", "", "", ""])
                continue
            r = b if sid == base else load(name, sid)
            iops = None if r is None else r["iops"]
            lat = cycle_lat_us(r)
            p99 = None if r is None else r["p99_us"]
            if sid == base:
                rows.append([name, label, fmt_iops(iops), "1 (baseline)", fmt_us(lat),
                             "1 (baseline)", fmt_us(p99), ""])
                continue
            iops_r = plain_ratio(iops, None if b is None else b["iops"])
            lat_r = plain_ratio(lat, cycle_lat_us(b))
            target = ""
            if name in MULTI_TARGETS:
                what, op, bound = MULTI_TARGETS[name]
                v = iops_r if what == "iops" else lat_r
                if v is not None:
                    ok = v <= bound if op == "<=" else v >= bound
                    metric = "IOPS" if what == "iops" else "latency"
                    target = f"{metric} {op} {bound}x: {'met' if ok else 'MISSED'}"
            rows.append([
                name, label, fmt_iops(iops),
                "n/a" if iops_r is None else f"{iops_r:.2f}",
                fmt_us(lat),
                "n/a" if lat_r is None else f"{lat_r:.2f}",
                fmt_us(p99), target,
            ])

    nproc = meta.get("nproc") or len(os.sched_getaffinity(0))
    kernel = meta.get("kernel") or platform.release()
    fio_version = ", ".join(sorted(fio_versions)) or "unknown fio"
    line = f"Machine: {nproc} CPUs (nproc), kernel {kernel}; {fio_version}"
    if meta.get("nbdkit"):
        line += f"; {meta['nbdkit']}"
    line += (f"; volumes {meta.get('size')} ({meta.get('export_bytes')} bytes used by fio), "
             f"{meta.get('runtime_s')} s per run, one run each")
    print(line)
    print()

    header = ["workload", "configuration", "IOPS", "IOPS ratio", "mean lat (µs)",
              "lat ratio", "p99 (µs)", "issue 4 target"]
    right = [False, False, True, True, True, True, True, False]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def render(cells):
        out = []
        for cell, w, r in zip(cells, widths, right):
            out.append(cell.rjust(w) if r else cell.ljust(w))
        return "| " + " | ".join(out) + " |"

    print(render(header))
    print("|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                         for w, r in zip(widths, right)) + "|")
    for row in rows:
        print(render(row))
    print()
    print(f"Ratios are to {base} in the same run (IOPS: higher is better; latency: lower "
          "is better). Mean latency is fio's completion latency; in "
          "randwrite-4k-qd1-fsync it is the write plus the flush after it (p99 is of the "
          "write alone). The issue's "
          "targets are stated for 2 replicas; the other rows are checked against the "
          "same bounds for comparison.")
    if problems:
        print()
        for p in problems:
            print(f"- missing/unusable result: {p}")
        return 1
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "table":
        return cmd_table(argv[2])
    if len(argv) == 3 and argv[1] == "multi":
        return cmd_multi(argv[2])
    if len(argv) == 3 and argv[1] == "cycle-lat":
        # mean write + flush (or read) latency of one result, in µs
        print(f"{cycle_lat_us(summarise(load_fio_json(argv[2]))):.1f}")
        return 0
    if len(argv) >= 4 and argv[1] == "best":
        cmd_best(argv[2], argv[3:])
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

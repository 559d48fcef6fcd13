#!/usr/bin/env python3
"""Controller benchmark (issue 5): 1,000 resources spawned on 3 nodes through
python-linstor, the time of each spawn, the time to list all resources, and the
controller's resident memory.

Usage: bench/controller.py [--tandem target/release/tandem] [--count 1000]
Needs python-linstor (pip install python-linstor). Starts its own controller on a free
port with a scratch database and stops it at the end. Prints a markdown table.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import linstor


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ok(replies, what):
    errors = [r for r in replies if r.is_error()]
    if errors:
        sys.exit("%s failed: %s" % (what, "; ".join(str(e) for e in errors)))


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--tandem", default=os.path.join(root, "target/release/tandem"))
    ap.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()
    if not os.access(args.tandem, os.X_OK):
        sys.exit("no tandem binary at %s: cargo build --release --bin tandem" % args.tandem)
    work = tempfile.mkdtemp(prefix="tandem-ctl-bench-", dir="/var/tmp")
    port = free_port()
    log = open(os.path.join(work, "controller.log"), "w")
    ctl = subprocess.Popen(
        [args.tandem, "controller", "--listen", "127.0.0.1:%d" % port,
         "--db", os.path.join(work, "ctl.sqlite")],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        url = "linstor://127.0.0.1:%d" % port
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or ctl.poll() is not None:
                    sys.exit("controller did not come up; see " + log.name)
                time.sleep(0.05)
        with linstor.Linstor(url, timeout=60) as lin:
            for i, n in enumerate(["pve01", "pve02", "pve03"]):
                ok(lin.node_create(n, "Satellite", "10.0.0.%d" % (i + 1)), "node create")
                ok(lin.storage_pool_create(n, "pool", "ZFS_THIN", "rpool/data"), "sp create")
            ok(lin.resource_group_create("rg", place_count=2, storage_pool="pool",
                                         diskless_on_remaining=True), "rg create")
            ok(lin.volume_group_create("rg"), "vg create")
            rss_before = rss_kib(ctl.pid)
            times = []
            start = time.perf_counter()
            for i in range(args.count):
                t0 = time.perf_counter()
                ok(lin.resource_group_spawn("rg", "vm-%d-disk-0" % (100 + i), ["10GiB"]), "spawn")
                times.append(time.perf_counter() - t0)
            total = time.perf_counter() - start
            rss_spawned = rss_kib(ctl.pid)
            lists = []
            for _ in range(5):
                t0 = time.perf_counter()
                rs = lin.resource_list()[0].resources
                lists.append(time.perf_counter() - t0)
            n_res = len(rs)
        rss_after = rss_kib(ctl.pid)
    finally:
        ctl.send_signal(signal.SIGTERM)
        try:
            ctl.wait(10)
        except subprocess.TimeoutExpired:
            ctl.kill()
        shutil.rmtree(work, ignore_errors=True)
    ms = [t * 1000 for t in times]
    print("| measurement | result | target |")
    print("|---|---|---|")
    print("| spawns (3 nodes, place-count 2 + tiebreaker) | %d in %.1f s | |" % (args.count, total))
    print("| time per spawn: mean / median / p99 / max | %.2f / %.2f / %.2f / %.2f ms | mean <= 10 ms: %s |" % (
        statistics.mean(ms), statistics.median(ms), sorted(ms)[int(len(ms) * 0.99) - 1], max(ms),
        "met" if statistics.mean(ms) <= 10 else "MISSED"))
    print("| first 100 / last 100 spawns, mean | %.2f / %.2f ms | |" % (
        statistics.mean(ms[:100]), statistics.mean(ms[-100:])))
    best = min(lists) * 1000
    print("| list all resources (%d objects), best of 5 / median | %.1f / %.1f ms | <= 200 ms: %s |" % (
        n_res, best, statistics.median(lists) * 1000, "met" if best <= 200 else "MISSED"))
    print("| controller RSS before spawns / after spawns / after the lists | %.1f / %.1f / %.1f MiB | <= 40 MiB: %s |" % (
        rss_before / 1024, rss_spawned / 1024, rss_after / 1024,
        "met" if rss_after / 1024 <= 40 else "MISSED"))


if __name__ == "__main__":
    main()

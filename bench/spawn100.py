#!/usr/bin/env python3
"""Satellite benchmark (issue 6): spawn N two-replica resources on the playground and
measure the time until every one is UpToDate on two nodes with a tiebreaker on the
third, and the memory of the controller and the satellites.

Usage: bench/spawn100.py [--tandem target/release/tandem] [--count 100] [--size 64M]
Starts `tandem playground` in a scratch directory, spawns through `tandem
resource-group spawn-resources` (one process per spawn, as a user types it), polls the
controller's /v1/view/resources, prints a markdown table and stops the playground.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def view(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/v1/view/resources" % port, timeout=10) as r:
        return json.load(r)


def replicated(resources, names):
    by = {}
    for r in resources:
        by.setdefault(r["name"], []).append(r)
    done = 0
    for n in names:
        rs = by.get(n, [])
        disks = [((v.get("state") or {}).get("disk_state")) for r in rs for v in r.get("volumes", [])[:1]]
        if len(rs) == 3 and disks.count("UpToDate") == 2:
            done += 1
    return done


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--tandem", default=os.path.join(root, "target/release/tandem"))
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--size", default="64M")
    args = ap.parse_args()
    if not os.access(args.tandem, os.X_OK):
        sys.exit("no tandem binary at %s: cargo build --release --bin tandem" % args.tandem)
    work = tempfile.mkdtemp(prefix="tandem-spawn-bench-", dir="/var/tmp")
    pg = subprocess.Popen([args.tandem, "playground", "--size", "16M", "--dir", work],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in pg.stdout:
            if line.startswith("Live status"):
                break
        else:
            sys.exit("the playground did not come up; logs in %s" % work)
        # Keep draining its output in the background.
        subprocess.Popen(["cat"], stdin=pg.stdout, stdout=subprocess.DEVNULL)
        with open(os.path.join(work, "playground.json")) as f:
            port = json.load(f)["controller"]
        names = ["bench%03d" % i for i in range(args.count)]
        t0 = time.monotonic()
        for n in names:
            subprocess.run([args.tandem, "--controllers", "127.0.0.1:%d" % port,
                            "resource-group", "spawn-resources", "playground", n, args.size],
                           check=True, stdout=subprocess.DEVNULL)
        t_spawned = time.monotonic() - t0
        done = 0
        while done < len(names):
            done = replicated(view(port), names)
            if time.monotonic() - t0 > 300:
                sys.exit("only %d of %d replicated after 300 s; logs in %s" % (done, len(names), work))
            time.sleep(0.2)
        t_all = time.monotonic() - t0
        ctl = [p for p in pids(work) if "controller" in open("/proc/%d/cmdline" % p).read()]
        sats = [p for p in pids(work) if "satellite" in open("/proc/%d/cmdline" % p).read()]
        blockds = [p for p in pids(work) if "\0blockd\0" in open("/proc/%d/cmdline" % p).read()]
        print("| measurement | result | target |")
        print("|---|---|---|")
        print("| %d spawns of %s (2 replicas + tiebreaker), commands issued | %.1f s | |" % (args.count, args.size, t_spawned))
        print("| first spawn to all %d UpToDate on 2 nodes | %.1f s | <= 20 s |" % (args.count, t_all))
        print("| controller RSS | %.1f MiB | |" % (sum(rss_kib(p) for p in ctl) / 1024))
        print("| satellite RSS (max of %d) | %.1f MiB | |" % (len(sats), max([rss_kib(p) for p in sats] or [0]) / 1024))
        print("| blockd RSS (max of %d, %d resources each) | %.1f MiB | |" % (len(blockds), args.count + 1, max([rss_kib(p) for p in blockds] or [0]) / 1024))
        print()
        print("machine: %d cores, %s" % (os.cpu_count(), os.uname().release))
    finally:
        pg.send_signal(signal.SIGTERM)
        try:
            pg.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pg.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

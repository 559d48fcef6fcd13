#!/usr/bin/env python3
"""Read tandem blockd's status over its admin socket (stdlib only).

Used by bench/replicated.sh. It speaks the admin protocol directly
(docs/admin-socket.md: one JSON request per line, one JSON answer per line)
instead of spawning `tandem local status --json`, so that polling every 10 ms
costs little and the times it reports are not dominated by process start-up.

  tandem_status.py uri SOCK RES
      Print the nbd_uri of volume 0 of RES.
  tandem_status.py volume SOCK RES FIELD
      Print one field of volume 0 of RES (JSON for objects, plain for scalars).
  tandem_status.py peer SOCK RES PEER FIELD
      Print one field of the peer named PEER in volume 0 of RES.
  tandem_status.py wait-connected TIMEOUT RES[,RES...] SOCK [SOCK ...]
      Wait until every peer of every RES on every node is Connected.
  tandem_status.py wait-sync [--since-ns NS] TIMEOUT RES[,RES...] SOCK [SOCK ...]
      Wait until, on every node, volume 0 of every RES is UpToDate (or
      Diskless) and every peer is Connected, Established, out_of_sync_bytes 0.
      Prints the seconds elapsed since NS (time.time_ns(), same clock as
      `date +%s%N`), or since the call. On timeout prints why to stderr and
      exits 1.
"""

import json
import socket
import sys
import time

POLL_S = 0.01


def status(sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(b'{"command":"status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    ans = json.loads(buf)
    if not ans.get("ok"):
        raise RuntimeError(f"{sock_path}: status refused: {ans.get('error')}")
    return ans["status"]


def volume0(st, res):
    for r in st.get("resources", []):
        if r.get("name") == res:
            if r.get("state") != "up":
                raise RuntimeError(f"resource {res} is {r.get('state')}: {r.get('error')}")
            for v in r.get("volumes", []):
                if v.get("number") == 0:
                    return v
            raise RuntimeError(f"resource {res} has no volume 0")
    raise RuntimeError(f"no resource {res} in status")


def show(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return "null"
    return str(value)


def why_not_in_sync(v):
    """None when in sync, else a short description of what is missing."""
    problems = []
    if v.get("disk_state") not in ("UpToDate", "Diskless"):
        problems.append(f"disk {v.get('disk_state')}")
    for p in v.get("peers") or []:
        if (p.get("connection") != "Connected" or p.get("replication") != "Established"
                or p.get("out_of_sync_bytes") != 0):
            problems.append(
                f"peer {p.get('name')}: {p.get('connection')}/{p.get('replication')} "
                f"oos={p.get('out_of_sync_bytes')} reason={p.get('reason')}")
    return "; ".join(problems) or None


def wait(timeout, check):
    """Poll check() (returns None when done, else a description) until done."""
    deadline = time.monotonic() + timeout
    last = "never polled"
    while True:
        try:
            last = check()
        except (OSError, ValueError, RuntimeError) as e:
            last = str(e)
        if last is None:
            return None
        if time.monotonic() > deadline:
            return last
        time.sleep(POLL_S)


def main(argv):
    if len(argv) == 4 and argv[1] == "uri":
        print(volume0(status(argv[2]), argv[3])["nbd_uri"])
        return 0
    if len(argv) == 5 and argv[1] == "volume":
        print(show(volume0(status(argv[2]), argv[3]).get(argv[4])))
        return 0
    if len(argv) == 6 and argv[1] == "peer":
        v = volume0(status(argv[2]), argv[3])
        peers = [p for p in v.get("peers") or [] if p.get("name") == argv[4]]
        if not peers:
            sys.exit(f"no peer {argv[4]} in {argv[3]} on {argv[2]}")
        print(show(peers[0].get(argv[5])))
        return 0
    if len(argv) >= 5 and argv[1] == "wait-connected":
        timeout, resources, socks = float(argv[2]), argv[3].split(","), argv[4:]

        def check():
            for s in socks:
                st = status(s)
                for res in resources:
                    for p in volume0(st, res).get("peers") or []:
                        if p.get("connection") != "Connected":
                            return (f"{s} {res}: peer {p.get('name')} is "
                                    f"{p.get('connection')} ({p.get('reason')})")
            return None

        last = wait(timeout, check)
        if last is not None:
            sys.exit(f"peers of {argv[3]} not connected after {timeout:g} s: {last}")
        return 0
    if len(argv) >= 5 and argv[1] == "wait-sync":
        args = argv[2:]
        since_ns = time.time_ns()
        if args[0] == "--since-ns":
            since_ns = int(args[1])
            args = args[2:]
        timeout, resources, socks = float(args[0]), args[1].split(","), args[2:]

        def check():
            for s in socks:
                st = status(s)
                for res in resources:
                    why = why_not_in_sync(volume0(st, res))
                    if why:
                        return f"{s} {res}: {why}"
            return None

        last = wait(timeout, check)
        elapsed = (time.time_ns() - since_ns) / 1e9
        if last is not None:
            sys.exit(f"not in sync after {elapsed:.1f} s: {last}")
        print(f"{elapsed:.3f}")
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"tandem_status.py: {e}")

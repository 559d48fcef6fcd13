#!/usr/bin/env python3
"""Round trip of a 32-byte message over loopback TCP between two processes.

The floor under any replicated write on loopback: protocol C waits for one such
round trip per write (the peer's ack) and one per flush. Prints microseconds per
round trip (mean over N round trips); Python adds a few microseconds to each.
Usage: rtt.py [N]
"""
import os
import socket
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(1)
port = lst.getsockname()[1]
pid = os.fork()
if pid == 0:
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = c.fileno()
    while True:
        d = os.read(fd, 64)
        if not d:
            os._exit(0)
        os.write(fd, d)
s, _ = lst.accept()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
fd = s.fileno()
msg = b"x" * 32
t0 = time.perf_counter()
for _ in range(n):
    os.write(fd, msg)
    got = 0
    while got < 32:
        got += len(os.read(fd, 64))
elapsed = time.perf_counter() - t0
s.close()
os.waitpid(pid, 0)
print(f"{elapsed / n * 1e6:.1f}")

"""How much the v2 POST script costs Redis per message, against v1's plain PUBLISH.

Starts nothing: give it a redis-server (>= 7) URL's host and port. Sends N commands
pipelined in batches (like the bus: one write per loop turn) and reports Redis' own CPU
time per command (INFO cpu, used_cpu_sys + used_cpu_user) and the wall time.

    redis-server --port 6399 --save '' &
    .venv/bin/python benchmarks/redis_post.py --port 6399
"""

from __future__ import annotations

import argparse
import socket
import time

from roomchat.protocol import UserMessage, encode
from roomchat.server.bus.redis import RoomKeys, scripts
from roomchat.server.bus.redis.resp import command


def _cpu(sock: socket.socket) -> float:
    sock.sendall(command(b"INFO", b"cpu"))
    data = b""
    while b"used_cpu_user:" not in data or not data.endswith(b"\r\n"):
        data += sock.recv(65536)
    fields = dict(
        line.split(b":", 1) for line in data.split(b"\r\n") if b":" in line and b"cpu" in line
    )
    return float(fields[b"used_cpu_sys"]) + float(fields[b"used_cpu_user"])


def _run(sock: socket.socket, cmd: bytes, count: int, batch: int) -> tuple[float, float]:
    reader = _Replies(sock)
    cpu0, wall0 = _cpu(sock), time.perf_counter()
    for _ in range(count // batch):
        sock.sendall(cmd * batch)
        reader.skip(batch)
    wall = time.perf_counter() - wall0
    return (_cpu(sock) - cpu0) / count * 1e6, wall / count * 1e6


class _Replies:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def skip(self, count: int) -> None:
        # Every reply here is one line (:N, +OK or -ERR).
        while self.buffer.count(b"\r\n") < count:
            self.buffer += self.sock.recv(1 << 20)
        for _ in range(count):
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            if line.startswith(b"-"):
                raise RuntimeError(line.decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--history", type=int, default=100)
    args = parser.parse_args()
    sock = socket.create_connection((args.host, args.port))
    sock.sendall(command(b"SCRIPT", b"LOAD", scripts.POST))
    sha = sock.recv(4096).strip()[5:]
    keys = RoomKeys("general")
    line = encode(UserMessage("general", "x3Ab_", "hello, this is a typical chat line"))
    publish = command(b"PUBLISH", keys.channel, line)
    # POST's ARGV (scripts.py): history size, verb, how many messages, their time, lines.
    ts = int(time.time() * 1000)
    post = command(b"EVALSHA", sha, 3, *keys.post_keys, 100, b"PUBLISH", 1, ts, line)
    post0 = command(b"EVALSHA", sha, 3, *keys.post_keys, 0, b"PUBLISH", 1, ts, line)
    for name, cmd in (
        ("PUBLISH", publish),
        ("POST, history 100", post),
        ("POST, history 0", post0),
    ):
        cpu, wall = _run(sock, cmd, args.count, args.batch)
        print(f"{name:<20} Redis CPU {cpu:6.2f} µs/message   wall {wall:6.2f} µs/message")


if __name__ == "__main__":
    main()

"""How fast a community change reaches another instance (docs/moderation.md): two
in-process servers on one Redis; a room created on A until B's session gets
``room_added``, and a ban issued on A until B's session gets ``moderation``.

Starts nothing: give it a redis-server (>= 7).

    redis-server --port 6399 --save '' &
    .venv/bin/python benchmarks/community.py --port 6399 --rounds 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time

from roomchat.server import ChatServer, ServerConfig


class _Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, bytearray()

    async def send(self, **command: object) -> None:
        await asyncio.get_running_loop().sock_sendall(
            self.sock, json.dumps(command).encode() + b"\n"
        )

    async def next(self, kind: str) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        while True:
            while b"\n" not in self.buffer:
                self.buffer += await loop.sock_recv(self.sock, 65536)
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer[:] = rest
            event: dict[str, object] = json.loads(line)
            if event["_et"] == kind:
                return event


async def _peer(server: ChatServer, name: str) -> _Peer:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    peer = _Peer(sock)
    await peer.next("login_successful")
    await peer.send(_ct="hello", v=2, name=name)
    await peer.next("rooms")
    return peer


def _report(what: str, samples: list[float]) -> None:
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(
        f"{what}: {len(samples)} rounds, median {statistics.median(samples) * 1000:.2f} ms, "
        f"p99 {p99 * 1000:.2f} ms, max {samples[-1] * 1000:.2f} ms"
    )


async def main(port: int, rounds: int) -> None:
    config = ServerConfig(
        host="127.0.0.1", port=0, bus_url=f"redis://127.0.0.1:{port}", user_rooms=True
    )
    a, b = await ChatServer.start(config), await ChatServer.start(config)
    try:
        alice, bob = await _peer(a, "alice"), await _peer(b, "bob")
        created, banned = [], []
        tag = int(time.time())
        for index in range(rounds):
            room = f"bench-{tag}-{index}"
            started = time.perf_counter()
            await alice.send(_ct="create_room", r=room)
            await bob.next("room_added")
            created.append(time.perf_counter() - started)
            await bob.send(_ct="join_room", r=room)
            await bob.next("user_joined_room")
            started = time.perf_counter()
            await alice.send(_ct="ban", r=room, u="bob")
            await bob.next("moderation")
            banned.append(time.perf_counter() - started)
        _report("room created on A -> room_added on B", created)
        _report("ban issued on A -> moderation on B", banned)
    finally:
        await a.close()
        await b.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6399)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.rounds))

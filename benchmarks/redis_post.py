"""What posting a message costs Redis: the bus's transaction against a plain PUBLISH and
against the POST script it replaced (2026-12-03), on a redis-server of its own.

Each variant posts runs of one message round-robin over 24 rooms (the seed's shape),
pipelined in batches as the bus writes a turn (one transaction per batch for the bus's
way), with a subscriber that reads every push, as an instance does. It reports Redis's
own CPU time per message (INFO cpu: used_cpu_sys + used_cpu_user, the kernel's TCP
included) and, with ``--callgrind``, the instructions Redis runs per message under
valgrind (user space only, repeatable to a few instructions whatever else the machine
does: the figure to compare designs by).

    .venv/bin/python benchmarks/redis_post.py [--batch 32] [--subscribers 4] [--callgrind]

``--subscribers N`` gives the cost per further subscribing instance (every subscriber
takes every room); ``--joins`` measures a join and a leave (the JOIN and LEAVE scripts)
in rooms of 10, 100 and 1,000 users instead.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hiredis

from roomchat.protocol import UserMessage, encode, joined_event, left_event
from roomchat.server.bus.redis import RoomKeys, scripts
from roomchat.server.bus.redis.commands import EXEC, MULTI, Posting
from roomchat.server.bus.redis.resp import command

ROOMS = 24

#: The POST script the transaction replaced (scripts.py before 2026-12-03), kept here
#: only to measure against: GET the epoch, INCRBY, XADD to a stream, PUBLISH.
OLD_POST = """
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  local now = redis.call('TIME')
  epoch = ARGV[3] .. now[1] .. now[2]
  redis.call('SET', KEYS[4], epoch)
end
local count = tonumber(ARGV[4])
local first = redis.call('INCRBY', KEYS[1], count) - count + 1
if ARGV[1] ~= '0' then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], first .. '-0',
    't', ARGV[5], 'm', ARGV[6])
end
redis.call(ARGV[2], KEYS[3], 'M' .. first .. ' ' .. ARGV[5] .. '\\n' .. ARGV[6])
return {first, epoch}
"""

# A batch of `n` messages: (RESP bytes, replies expected).
Builder = Callable[[int], tuple[bytes, int]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _redis(callgrind: Path | None, cpu: str | None) -> Iterator[int]:
    port = _free_port()
    argv = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    if callgrind is not None:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}/cg.%p", *argv]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(30)


class _Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    def replies(self, count: int) -> list[object]:
        out: list[object] = []
        while len(out) < count:
            reply = self.reader.gets()
            if reply is False:
                self.reader.feed(self.sock.recv(1 << 20))
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise SystemExit(f"Redis refused: {reply}")
            out.append(reply)
        return out

    def call(self, *args: bytes | str | int) -> object:
        self.sock.sendall(command(*args))
        return self.replies(1)[0]

    def cpu(self) -> float:
        info = self.call(b"INFO", b"cpu")
        assert isinstance(info, bytes)
        fields = dict(line.split(":", 1) for line in info.decode().split("\r\n") if ":" in line)
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


def _subscriber(port: int, channels: list[bytes], stop: threading.Event) -> None:
    conn = _Conn(port)
    conn.sock.sendall(command(b"SUBSCRIBE", *channels))
    conn.sock.settimeout(0.2)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            conn.reader.feed(conn.sock.recv(1 << 20))
            while conn.reader.gets() is not False:
                pass


def _builders(conn: _Conn, history: int) -> dict[str, Builder]:
    keys = [RoomKeys(f"room-{n:02d}") for n in range(ROOMS)]
    line = encode(UserMessage("room-07", "user-4f2a9c1e", "hello, this is a typical chat line"))
    ts = int(time.time() * 1000)
    turn = iter(range(1 << 62))
    sha = conn.call(b"SCRIPT", b"LOAD", OLD_POST)
    assert isinstance(sha, bytes)

    def rooms(n: int) -> list[RoomKeys]:
        return [keys[next(turn) % ROOMS] for _ in range(n)]

    payload = b"M%d\n%s" % (ts, line)

    def publish(n: int) -> tuple[bytes, int]:
        return b"".join(command(b"PUBLISH", k.channel, payload) for k in rooms(n)), n

    postings = {k.channel: Posting(k, b"PUBLISH", history) for k in keys}

    def transaction(n: int) -> tuple[bytes, int]:
        body = b"".join(postings[k.channel].run(1, ts, line) for k in rooms(n))
        return MULTI + body + EXEC, 2 + n * (3 if history else 2)

    def old_script(n: int) -> tuple[bytes, int]:
        out = []
        for k in rooms(n):
            script_keys = (k.counter, k.recent + b":x", k.channel, k.epoch)  # a stream
            args = (history, b"PUBLISH", b"i1-", 1, ts, line)
            out.append(command(b"EVALSHA", sha, 4, *script_keys, *args))
        return b"".join(out), n

    return {
        "PUBLISH alone (no numbering, no history)": publish,
        f"the transaction, history {history}": transaction,
        f"the POST script it replaced, history {history}": old_script,
    }


def _run(conn: _Conn, build: Builder, messages: int, batch: int) -> None:
    for _ in range(messages // batch):
        data, replies = build(batch)
        conn.sock.sendall(data)
        conn.replies(replies)


def _join_builders(conn: _Conn) -> dict[str, Builder]:
    """JOIN then LEAVE of one more session, in rooms already holding 10/100/1,000 users."""
    join = conn.call(b"SCRIPT", b"LOAD", scripts.JOIN)
    leave = conn.call(b"SCRIPT", b"LOAD", scripts.LEAVE)
    assert isinstance(join, bytes) and isinstance(leave, bytes)
    builders: dict[str, Builder] = {}
    for size in (10, 100, 1000):
        room = f"room-{size}"
        keys = RoomKeys(room).script_keys

        def joined(user: str, session: str, room: str = room, keys: tuple = keys) -> bytes:
            args = (session, b"i1", user, b"PUBLISH", joined_event(room, user))
            more = (left_event(room, user), b"", 0, 0, b"i1-")
            return command(b"EVALSHA", join, len(keys), *keys, *args, *more)

        for n in range(size):
            conn.sock.sendall(joined(f"u{n}", f"s{n}"))
            conn.replies(1)

        def pair(n: int, keys: tuple = keys, joined: Callable[..., bytes] = joined) -> tuple:
            out = []
            for _ in range(n):
                out.append(joined("newcomer", "s-new"))
                out.append(
                    command(b"EVALSHA", leave, len(keys), *keys, b"s-new", b"newcomer", b"PUBLISH")
                )
            return b"".join(out), 2 * n

        builders[f"a join and a leave, room of {size} users"] = pair
    return builders


def _instructions(directory: Path) -> int:
    subprocess.run(["callgrind_control", "--dump"], capture_output=True, check=False)
    time.sleep(0.5)
    newest = max(glob.glob(f"{directory}/cg.*"), key=os.path.getmtime)
    for line in reversed(Path(newest).read_text().splitlines()):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {newest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--history", type=int, default=100)
    parser.add_argument("--cpu", default="1", help="the CPU for redis-server ('' for any)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per message")
    parser.add_argument("--subscribers", type=int, default=1, help="instances subscribed")
    parser.add_argument("--joins", action="store_true", help="joins and leaves instead")
    args = parser.parse_args()
    if args.callgrind and not shutil.which("callgrind_control"):
        sys.exit("--callgrind needs valgrind (apt-get install valgrind)")
    messages = args.messages // 20 if args.callgrind else args.messages
    with (
        tempfile.TemporaryDirectory() as tmp,
        _redis(Path(tmp) if args.callgrind else None, args.cpu or None) as port,
    ):
        conn = _Conn(port)
        stop = threading.Event()
        channels = [RoomKeys(f"room-{n:02d}").channel for n in range(ROOMS)]
        for _ in range(args.subscribers):
            threading.Thread(target=_subscriber, args=(port, channels, stop), daemon=True).start()
        time.sleep(0.5)
        unit = "instructions" if args.callgrind else "µs of Redis CPU"
        if args.joins:
            print(f"{unit} per join and leave (JOIN + LEAVE scripts)")
            builders = _join_builders(conn)
        else:
            print(f"{unit} per message, {ROOMS} rooms, {args.subscribers} subscribers")
            builders = _builders(conn, args.history)
        for name, build in builders.items():
            for batch in args.batch:
                _run(conn, build, batch * 50, batch)  # warm up
                if args.callgrind:
                    _instructions(Path(tmp))
                    _run(conn, build, messages, batch)
                    figure = f"{_instructions(Path(tmp)) / messages:9,.0f}"
                else:
                    before = conn.cpu()
                    _run(conn, build, messages, batch)
                    figure = f"{1e6 * (conn.cpu() - before) / messages:9.2f}"
                print(f"  {name:<46} batch {batch:>3}: {figure}", flush=True)
        stop.set()


if __name__ == "__main__":
    main()

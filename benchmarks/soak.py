"""`make soak`: roomchat pushed past its limits, on one core, with the figures recorded.

    .venv/bin/python benchmarks/soak.py                       # everything (~70 minutes)
    .venv/bin/python benchmarks/soak.py --only overload,fd,slow   # the short ones (~3 min)
    .venv/bin/python benchmarks/soak.py --soak-minutes 5      # a shorter soak

Each part starts its own `roomchat serve` pinned to CPU 0 (the load on the other CPU) and
writes its figures to benchmarks/results/soak.json and soak.md:

- overload: 20 clients flood ten 2-member rooms as fast as TCP lets them (far more than
  the server can route) for 60 s, while a healthy pair in another room chats at 10
  messages/s and a new client connects now and then: the server must not crash, its RSS
  stays bounded (peak reported), the healthy pair loses nothing (p99 reported), and new
  clients get their login (time reported).
- fd: the open-files limit lowered to 1,024; connections until the limit + 500, held for
  a few seconds (the server's CPU meanwhile, and a pair that keeps chatting), then
  released: how soon a new client gets its login again.
- slow: 200 clients that stop reading, in rooms with busy senders: each must be cut off
  (the slow-consumer bound), the others lose nothing; RSS before, at the peak and after.
- soak: moderate load (500 users, 5 rooms each, 1 message/10 s each) for an hour with the
  server's RSS sampled every 10 s: its growth; and the message store (SQLite, each room
  keeping its last 2,000) sampled every minute: its size and rows, which level off
  where retention says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roomchat.client import ChatClient, connect
from roomchat.protocol import SendMessage, UserMessage, encode
from roomchat.system import raise_open_files, run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


@dataclass
class Server:
    """`roomchat serve` on CPU 0, port 0, its log in a temporary file, its message store
    (SQLite, the default) in a temporary directory."""

    args: list[str] = field(default_factory=list)
    nofile: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path = Path()
    data: Path = Path()

    def __enter__(self) -> Server:
        self.data = Path(tempfile.mkdtemp(prefix="roomchat-soak-data-"))
        argv = [str(BIN / "roomchat"), "serve", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--data-dir", str(self.data), *self.args]
        if os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
            argv = ["taskset", "-c", "0", *argv]
        fd, name = tempfile.mkstemp(prefix="roomchat-soak-", suffix=".log")
        self.log = Path(name)
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=fd, preexec_fn=limits)
        os.close(fd)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if match := re.search(r"listening on \S+?:(\d+)", self.log.read_text()):
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"roomchat serve did not start:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)

    def store(self) -> tuple[float, int]:
        """The SQLite store's size (MiB, with its WAL) and how many messages it holds."""
        files = list(self.data.glob("roomchat.sqlite3*"))
        size = sum(f.stat().st_size for f in files if f.exists()) / 2**20
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.data / 'roomchat.sqlite3'}?mode=ro", uri=True)
            ) as db:
                rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        except sqlite3.Error:
            rows = -1
        return size, rows

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log.read_text()))


class Pair:
    """Two clients in a room of their own, one sending stamped messages at a steady rate,
    both checking they get every one; latency from the stamps."""

    def __init__(self, port: int, room: str) -> None:
        self.port = port
        self.room = room
        self.latencies: list[float] = []
        self.sent = 0
        self.received = 0
        self.errors: list[str] = []

    async def run(self, seconds: float, rate: float) -> None:
        got: asyncio.Queue[UserMessage] = asyncio.Queue()

        def on_event(event: object) -> None:
            if isinstance(event, UserMessage):
                got.put_nowait(event)

        try:
            a: ChatClient = await connect(
                "127.0.0.1", self.port, timeout=60, on_event=lambda event: None
            )
            b: ChatClient = await connect("127.0.0.1", self.port, timeout=60, on_event=on_event)
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.errors.append(f"could not connect: {exc!r}")
            return
        await a.join(self.room)
        await b.join(self.room)
        await asyncio.sleep(0.5)
        end = time.monotonic() + seconds

        async def receive() -> None:
            while True:
                event = await got.get()
                if event.user_id == a.user_id:
                    self.received += 1
                    self.latencies.append(time.monotonic() - float(event.content))

        reader = asyncio.create_task(receive())
        try:
            while time.monotonic() < end and not a.closed:
                await a.send(self.room, repr(time.monotonic()))
                self.sent += 1
                await asyncio.sleep(1 / rate)
            deadline = time.monotonic() + 10
            while self.received < self.sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            reader.cancel()
            a.close()
            b.close()

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

        return {
            "sent": self.sent,
            "received": self.received,
            "lost": self.sent - self.received,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(1000 * lat[-1], 1) if lat else None,
            "errors": self.errors,
        }


async def flooder(port: int, room: str, stop: asyncio.Event, rate: float = 0.0) -> int:
    """Join ``room`` and send as fast as TCP lets us (or ``rate`` messages/s), reading
    (and dropping) everything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"_ct":"join_room","r":"%s"}\n' % room.encode())
    batch = encode(SendMessage(room, "f" * 64)) * 200
    sent = 0

    async def drain_reads() -> None:
        while await reader.read(1 << 16):
            pass

    draining = asyncio.create_task(drain_reads())
    try:
        while not stop.is_set():
            writer.write(batch)
            sent += 200
            await writer.drain()
            if rate:
                await asyncio.sleep(200 / rate)
    except (ConnectionError, OSError):
        pass
    finally:
        draining.cancel()
        writer.close()
    return sent


async def login_time(port: int) -> float:
    """Seconds until a new client has its login (inf if it got none within a minute)."""
    started = time.monotonic()
    try:
        client = await connect("127.0.0.1", port, timeout=60)
    except (OSError, TimeoutError, ConnectionError):
        return float("inf")
    took = time.monotonic() - started
    client.close()
    return took


# -- the parts --------------------------------------------------------------------------------


async def overload(seconds: float) -> dict[str, Any]:
    with Server() as server:
        stop = asyncio.Event()
        names = await _room_names(server.port)  # ten packaged rooms flooded, one quiet
        flood_rooms, quiet_room = names[:10], names[10]
        floods = [
            asyncio.create_task(flooder(server.port, flood_rooms[n % 10], stop)) for n in range(20)
        ]
        pair = Pair(server.port, quiet_room)
        peak = 0.0
        logins: list[float] = []

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set() and server.alive:
                peak = max(peak, rss_mib(server.pid))
                await asyncio.sleep(0.5)

        async def newcomers() -> None:
            await asyncio.sleep(5)
            while not stop.is_set():
                logins.append(await login_time(server.port))
                await asyncio.sleep(5)

        watcher = asyncio.create_task(watch())
        arrivals = asyncio.create_task(newcomers())
        cpu0 = cpu_seconds(server.pid)
        await pair.run(seconds, rate=10)
        cpu = cpu_seconds(server.pid) - cpu0
        stop.set()
        sent = sum(await asyncio.gather(*floods))
        watcher.cancel()
        arrivals.cancel()
        return {
            "seconds": seconds,
            "flood_messages_sent": sent,
            "flood_messages_per_s": round(sent / seconds),
            "server_alive": server.alive,
            "server_cpu_pct": round(100 * cpu / seconds, 1),
            "rss_peak_mib": round(peak, 1),
            "healthy_pair": pair.summary(),
            "new_client_login_s": {
                "count": len(logins),
                "max": round(max(logins), 3) if logins else None,
                "median": round(sorted(logins)[len(logins) // 2], 3) if logins else None,
            },
            "slow_consumers_cut": server.count(r"slow consumer, more than"),
            "rate_limited_logs": server.count(r"(?i)rate.limit|flood"),
        }


async def _room_names(port: int) -> list[str]:
    client = await connect("127.0.0.1", port, timeout=30)
    names = [room.name for room in client.rooms]
    client.close()
    return names


async def fd_exhaustion(limit: int = 1024, extra: int = 500, hold: float = 5.0) -> dict[str, Any]:
    with Server(nofile=limit) as server:
        pair = Pair(server.port, (await _room_names(server.port))[0])
        chatting = asyncio.create_task(pair.run(hold + 10, rate=10))
        await asyncio.sleep(1)
        socks: list[socket.socket] = []
        loop = asyncio.get_running_loop()
        for _ in range(limit + extra):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", server.port)), 2)
            socks.append(sock)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(hold)
        cpu_at_limit = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        for sock in socks:
            sock.close()
        released = time.monotonic()
        while await login_time(server.port) == float("inf"):
            await asyncio.sleep(0.05)
        recovery = time.monotonic() - released
        await chatting
        return {
            "open_files_limit": limit,
            "connections_tried": limit + extra,
            "server_cpu_at_limit_pct": round(100 * cpu_at_limit, 1),
            "refusals_logged": server.count(r"refused a connection"),
            "healthy_pair_while_at_limit": pair.summary(),
            "recovery_s": round(recovery, 3),
            "server_alive": server.alive,
        }


async def slow_consumers(count: int = 200, seconds: float = 20.0) -> dict[str, Any]:
    with Server() as server:
        names = await _room_names(server.port)
        busy = names[:4]
        baseline = rss_mib(server.pid)
        loop = asyncio.get_running_loop()
        slow: list[socket.socket] = []
        for n in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            await loop.sock_sendall(sock, b'{"_ct":"join_room","r":"%s"}\n' % busy[n % 4].encode())
            slow.append(sock)
        stop = asyncio.Event()
        # Busy, not flooded: 4,000 messages/s into each room, which a reader keeps up with.
        floods = [
            asyncio.create_task(flooder(server.port, busy[n % 4], stop, rate=2000))
            for n in range(8)
        ]
        pair = Pair(server.port, busy[0])  # a healthy pair inside a busy room
        peak = baseline

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set() and server.alive:
                peak = max(peak, rss_mib(server.pid))
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        await pair.run(seconds, rate=10)
        stop.set()
        await asyncio.gather(*floods)
        watcher.cancel()
        cut = server.count(r"slow consumer, more than")
        for sock in slow:
            sock.close()
        await asyncio.sleep(3)  # the server settles; RSS read once it has
        after = rss_mib(server.pid)
        return {
            "slow_consumers": count,
            "cut_off": cut,
            "healthy_pair_in_a_busy_room": pair.summary(),
            "rss_mib": {
                "before": round(baseline, 1),
                "peak": round(peak, 1),
                "after": round(after, 1),
            },
            "server_alive": server.alive,
        }


#: The soak's retention: what each room keeps, so that the store's size levels off once
#: every room holds this many (24 rooms), as retention predicts.
SOAK_RETAIN = 2000


async def soak(minutes: float) -> dict[str, Any]:
    with Server(["--retain-messages", str(SOAK_RETAIN)]) as server:
        samples: list[tuple[float, float]] = []
        stored: list[tuple[float, float, int]] = []  # (s, MiB, messages) every minute
        stress = [
            str(BIN / "roomchat"), "stress", "steady", "--addr", f"127.0.0.1:{server.port}",
            "--users", "500", "--rooms", "24", "--rooms-per-user", "5", "--rate", "0.1",
            "--duration", str(minutes * 60), "--warmup", "5", "--check-every", "10",
            "--json", "--quiet", "--drain-timeout", "20",
        ]  # fmt: skip
        if os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
            stress = ["taskset", "-c", "1", *stress]
        proc = await asyncio.create_subprocess_exec(
            *stress, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        # Both pipes are read all along (an unread pipe can stall the tool), while the
        # server's RSS is sampled every 10 s.
        output = asyncio.ensure_future(proc.communicate())
        started = time.monotonic()
        while not output.done():
            samples.append((time.monotonic() - started, rss_mib(server.pid)))
            if len(samples) % 6 == 1:
                stored.append((samples[-1][0], *server.store()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output), 10)
        out, err = output.result()
        lines = out.decode(errors="replace").strip().splitlines()
        report: dict[str, Any] = {}
        if lines:
            with contextlib.suppress(ValueError):
                report = json.loads(lines[-1])
        if not report:  # say why rather than report nothing
            tail = err.decode(errors="replace").strip().splitlines()[-5:]
            report = {"stress_exit": proc.returncode, "stress_stderr_tail": tail}
        # Growth: the last ten minutes' average against the average of minutes 2-12
        # (after the joins and the allocator's warm-up), in MiB.
        early = [rss for t, rss in samples if 120 <= t <= 720] or [s[1] for s in samples[:10]]
        late = [rss for t, rss in samples if t >= samples[-1][0] - 600] or [samples[-1][1]]
        return {
            "minutes": minutes,
            "users": 500,
            "rss_mib_samples_every_10s": [round(rss, 1) for _, rss in samples],
            "rss_mib_first": round(samples[0][1], 1) if samples else None,
            "rss_mib_max": round(max(r for _, r in samples), 1) if samples else None,
            "rss_growth_mib": round(sum(late) / len(late) - sum(early) / len(early), 2),
            "deliveries": report.get("deliveries"),
            "lost": report.get("lost"),
            "p99_ms": report.get("latency_ms", {}).get("p99"),
            "server_alive": server.alive,
            # The store: at most 24 rooms x SOAK_RETAIN messages once retention sweeps
            # (every minute); its size levels off with them.
            "store_retain_messages_per_room": SOAK_RETAIN,
            "store_messages_at_most": 24 * SOAK_RETAIN,
            "store_every_minute": [
                {"s": round(t), "mib": round(mib, 2), "messages": rows} for t, mib, rows in stored
            ],
            **{k: v for k, v in report.items() if k.startswith("stress_")},
        }


def markdown(results: dict[str, Any]) -> str:
    lines = ["# roomchat soak results", "", f"{time.strftime('%Y-%m-%d %H:%M %Z')}", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", "```json", json.dumps(result, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="overload,fd,slow,soak")
    parser.add_argument("--overload-seconds", type=float, default=60.0)
    parser.add_argument("--soak-minutes", type=float, default=60.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    raise_open_files()
    parts = {
        "overload": lambda: overload(args.overload_seconds),
        "fd": fd_exhaustion,
        "slow": slow_consumers,
        "soak": lambda: soak(args.soak_minutes),
    }
    results: dict[str, Any] = {}
    out_json = args.output / "soak.json"
    if out_json.exists():
        results = json.loads(out_json.read_text())  # keep the parts not run this time
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        results[name] = run(parts[name]())
        print(json.dumps(results[name], indent=1), flush=True)
        args.output.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=1) + "\n")
        (args.output / "soak.md").write_text(markdown(results))


if __name__ == "__main__":
    main()

"""Sustained messages/s written to PostgreSQL through PostgresStore.write.

Writes batches of --batch messages (~40 bytes of content each, spread over --rooms
rooms, plus --markers read markers per batch) one after the other, as the server's
store writer does, for --seconds, and prints messages/s. With --url it uses that
database (its tables are created if needed; the rows it writes stay); without, it
starts a throwaway PostgreSQL of its own (initdb in a temporary directory, as
``nobody`` when run as root; binaries from $ROOMCHAT_PG_BIN or the newest
/usr/lib/postgresql/*/bin, see scripts/ensure-postgresql) with the default settings,
fsync on, and removes it afterwards.

    .venv/bin/python benchmarks/store_postgres.py --seconds 5
    .venv/bin/python benchmarks/store_postgres.py --url postgresql://me@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roomchat.server.core.ports import StoreBatch
from roomchat.server.store.postgres import PostgresStore


def _bin_dir() -> Path:
    env = os.environ.get("ROOMCHAT_PG_BIN")
    if env:
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise SystemExit("no PostgreSQL binaries: run scripts/ensure-postgresql or pass --url")
    return Path(initdb).parent


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL in a temporary directory for as long as the block runs; its URL."""
    bin_dir = _bin_dir()
    directory = Path(tempfile.mkdtemp(prefix="roomchat-bench-pg-"))
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = str(directory / "data")
    server = None
    try:
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", "bench", "--auth=trust", "--locale=C"],
            check=True,
            capture_output=True,
            **as_user,
        )
        command = [
            str(bin_dir / "postgres"), "-D", data, "-p", str(port), "-k", str(directory),
            "-c", "listen_addresses=127.0.0.1",
        ]  # fmt: skip
        with open(directory / "postgres.log", "wb") as log:
            server = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **as_user,
            )
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
        deadline = time.monotonic() + 30
        while subprocess.run(ready, check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((directory / "postgres.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield f"postgresql://bench@127.0.0.1:{port}/postgres"
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # a fast shutdown
            server.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def _batches(size: int, rooms: int, markers: int) -> Iterator[StoreBatch]:
    names = [f"room{i}" for i in range(rooms)]
    content = "the quick brown fox jumps over a lazy do"  # 40 bytes
    q = 0
    ts = int(time.time() * 1000)
    while True:
        batch = StoreBatch()
        for _ in range(size):
            q += 1
            batch.messages.append((names[q % rooms], "bench", q, ts + q, f"user{q % 97}", content))
        for i in range(markers):
            batch.markers.append((f"user{(q + i) % 97}", names[i % rooms], "bench", q))
        yield batch


async def measure(url: str, seconds: float, size: int, rooms: int, markers: int) -> float:
    store = PostgresStore(url)
    await store.open()
    try:
        batches = _batches(size, rooms, markers)
        await store.write(next(batches))  # warm up: prepared statements, the pool
        written, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            batch = next(batches)
            await store.write(batch)
            written += len(batch.messages)
        return written / elapsed
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a PostgreSQL URL (default: start a throwaway server)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=500, help="messages per write")
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--markers", type=int, default=0, help="read markers per write")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()

    def run(url: str) -> float:
        work = measure(url, args.seconds, args.batch, args.rooms, args.markers)
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(work)
        return asyncio.run(work)

    if args.url:
        rate = run(args.url)
    else:
        with throwaway_postgres() as url:
            rate = run(url)
    print(
        f"PostgresStore.write: {rate:,.0f} messages/s sustained over {args.seconds:g} s "
        f"({args.batch}-message batches, {args.rooms} rooms, {args.markers} markers/batch, "
        f"{args.loop})"
    )


if __name__ == "__main__":
    main()

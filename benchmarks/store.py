"""The message store as the server drives it: sustained writes through the Archive, and
history pages out of a room holding many stored messages.

1. **Writes.** Runs of messages are handed to ``Archive.run`` as the rooms do (one call
   per message, --per-turn of them per event-loop turn, spread over --rooms rooms) at
   --rate messages/s for --seconds; the Archive's writer batches what each turn handed
   over into one transaction off the loop. Prints messages/s written and how many were
   lost (past --store-backlog): the rate counts as sustained only with none lost.
2. **Pages.** One room is filled with --page-rows messages (written in big batches,
   straight to the store), then --pages pages of 200 messages at random places are
   asked through ``Archive.page`` (what a ``history`` command waits for), one after the
   other; prints their p50/p99/max latency.
3. **CPU** (``--only cpu``, not in the default run): the store's CPU per message in the
   server's process, writer thread included, at --rate in turns of --per-turn.

    .venv/bin/python benchmarks/store.py                       # SQLite in a temporary dir
    .venv/bin/python benchmarks/store.py --store postgresql    # a throwaway PostgreSQL
    .venv/bin/python benchmarks/store.py --store postgresql://me@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import Iterator

from hdrh.histogram import HdrHistogram
from store_postgres import throwaway_postgres  # beside this file (python benchmarks/store.py)

from roomchat.server.core.ports import StoreBatch
from roomchat.server.store import Archive, open_store

CONTENT = "the quick brown fox jumps over a lazy do"  # 40 bytes
LINE = b'{"_et":"user_message","r":"%s","u":"%s","c":"' + CONTENT.encode() + b'"}\r\n'


async def writes(
    url: str, seconds: float, rate: float, per_turn: int, rooms: int, backlog: int
) -> str:
    archive = Archive(open_store(url), backlog=backlog)
    await archive.start()
    try:
        names = [f"room{i}" for i in range(rooms)]
        numbering = {name: archive.numbering(name) for name in names}
        lines = {name: LINE % (name.encode(), b"user") for name in names}
        handed, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            if rate:  # the offered load: per_turn messages every per_turn / rate seconds
                await asyncio.sleep(max(0.0, handed / rate - elapsed))
            now = int(time.time() * 1000)
            for i in range(per_turn):
                name = names[i % rooms]
                epoch, last = numbering[name]
                numbering[name] = (epoch, last + 1)
                archive.run(name, epoch, last + 1, 1, now, lines[name])
            handed += per_turn
            await asyncio.sleep(0)  # the turn ends: the writer takes what was handed
        offered = handed / (time.perf_counter() - start)
        await archive.flushed(60)
        elapsed = time.perf_counter() - start
        return (
            f"writes: {archive.written / elapsed:,.0f} messages/s written over {elapsed:.1f} s, "
            f"{offered:,.0f}/s offered ({handed:,} handed over, {archive.written:,} written, "
            f"{archive.lost:,} lost, {archive.failures} failed writes; {per_turn} per turn, "
            f"{rooms} rooms)"
        )
    finally:
        await archive.close()


async def cpu(url: str, seconds: float, rate: float, per_turn: int, rooms: int) -> str:
    """The store's CPU per message in this process (writer thread included): the same
    paced loop without handing anything over, then handing every message over."""
    archive = Archive(open_store(url))
    await archive.start()
    try:
        names = [f"room{i}" for i in range(rooms)]
        numbering = {name: archive.numbering(name) for name in names}
        lines = {name: LINE % (name.encode(), b"user") for name in names}
        spent = []
        for hand in (False, True):
            cpu_start, start, handed = time.process_time(), time.perf_counter(), 0
            while (elapsed := time.perf_counter() - start) < seconds:
                await asyncio.sleep(max(0.0, handed / rate - elapsed))
                now = int(time.time() * 1000)
                for i in range(per_turn if hand else 0):
                    name = names[i % rooms]
                    epoch, last = numbering[name]
                    numbering[name] = (epoch, last + 1)
                    archive.run(name, epoch, last + 1, 1, now, lines[name])
                handed += per_turn
            await archive.flushed(60)
            spent.append((time.process_time() - cpu_start) / handed * 1e6)
        return (
            f"cpu: {spent[1] - spent[0]:.2f} us of CPU per message for the store "
            f"({spent[1]:.2f} handing over, {spent[0]:.2f} the loop alone; {rate:,.0f} "
            f"messages/s in turns of {per_turn} over {rooms} rooms, {seconds:g} s each)"
        )
    finally:
        await archive.close()


def _fill(rows: int, batch: int) -> Iterator[StoreBatch]:
    ts = int(time.time() * 1000) - rows
    first = StoreBatch(epochs=[("big", "bench")])
    q = 0
    while q < rows:
        out = first if q == 0 else StoreBatch()
        for _ in range(min(batch, rows - q)):
            q += 1
            out.messages.append(("big", "bench", q, ts + q, f"user{q % 97}", CONTENT))
        yield out


async def pages(url: str, rows: int, count: int) -> str:
    archive = Archive(open_store(url))
    await archive.start()
    try:
        stored = archive.records.get("big")
        if stored is None or stored.last < rows:
            started = time.perf_counter()
            for batch in _fill(rows, 20_000):
                await archive.store.write(batch)
            filled = f"filled in {time.perf_counter() - started:.1f} s"
        else:
            filled = "already there"
        histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds
        rng = random.Random(1)
        for _ in range(50):  # warm up: the reader's connection, the page cache
            await archive.page("big", "bench", rng.randint(201, rows), None, 200)
        for _ in range(count):
            before = rng.randint(201, rows)
            started = time.perf_counter()
            page = await archive.page("big", "bench", before, None, 200)
            histogram.record_value(max(1, int((time.perf_counter() - started) * 1e6)))
            assert len(page) == 200 and page[-1].seq == before - 1, (before, page[-1])
        ms = [histogram.get_value_at_percentile(p) / 1000 for p in (50, 99, 100)]
        return (
            f"pages: 200 messages out of a room of {rows:,} ({filled}): "
            f"p50 {ms[0]:.2f} ms, p99 {ms[1]:.2f} ms, max {ms[2]:.2f} ms over {count} pages"
        )
    finally:
        await archive.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (a temporary file), postgresql (a throwaway server), or a URL",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, default=50_000, help="messages/s offered (0: as fast as it can)"
    )
    parser.add_argument("--per-turn", type=int, default=500, help="messages per loop turn")
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--store-backlog", type=int, default=100_000)
    parser.add_argument("--page-rows", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--only", choices=["writes", "pages", "cpu"])
    args = parser.parse_args()

    import uvloop

    def run(url: str) -> None:
        print(f"store: {url.split('@')[-1]}")
        if args.only in (None, "writes"):
            work = writes(
                url, args.seconds, args.rate, args.per_turn, args.rooms, args.store_backlog
            )
            print(uvloop.run(work), flush=True)
        if args.only in (None, "pages"):
            print(uvloop.run(pages(url, args.page_rows, args.pages)), flush=True)
        if args.only == "cpu":  # e.g. --only cpu --rate 10000 --per-turn 30 --rooms 24
            work = cpu(url, args.seconds, args.rate, args.per_turn, args.rooms)
            print(uvloop.run(work), flush=True)

    with contextlib.ExitStack() as stack:
        if args.store == "sqlite":
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="roomchat-"))
            run(f"sqlite:///{directory}/bench.sqlite3")
        elif args.store == "postgresql":
            run(stack.enter_context(throwaway_postgres()))
        else:
            run(args.store)


if __name__ == "__main__":
    main()

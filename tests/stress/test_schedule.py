"""The sender when it falls behind its schedule: bounded turns, a bounded backlog, and a
report that says so. Driven by a fake clock: nothing here depends on how fast this
machine is."""

from __future__ import annotations

import asyncio
import io
import math
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from roomchat.stress import run_in_process
from roomchat.stress.config import SteadyConfig
from roomchat.stress.report import build_report, report_table
from roomchat.stress.schedule import BACKLOG_NS, TURN_BATCH, SteadySchedule
from roomchat.stress.stamp import parse_stamp
from roomchat.stress.stats import WorkerResult
from roomchat.stress.worker import LoadWorker
from tests.helpers import TIMEOUT

MS = 1_000_000  # ns


def reference_turn(
    k: int, now: float, start: float, period: float, total: int, n: int, measure_from: float
) -> tuple[dict[tuple[int, bool], int], int]:
    """What the sender did on a turn before it had bounds: everything due, at once."""
    due = min(total, math.floor((now - start) / period) + 1)
    batches: dict[tuple[int, bool], int] = {}
    while k < due:
        key = (k % n, start + k * period >= measure_from)
        batches[key] = batches.get(key, 0) + 1
        k += 1
    return batches, k


@pytest.mark.parametrize(("users", "rate"), [(48, 200.0), (1000, 3.0), (10_000, 0.1), (4, 2500)])
def test_a_sender_that_keeps_up_sends_what_it_always_did(users: int, rate: float) -> None:
    # The clock moves on by 0.1 to 5 ms a turn: the sender keeps to its schedule, and each
    # turn hands out exactly what the unbounded sender did (same messages, same phases).
    start, period = 10**12 + 0.5, 1e9 / (users * rate)
    measure_from = start + 0.7e9
    total = math.ceil(2e9 / period)
    schedule = SteadySchedule(start, period, total, users, measure_from)
    assert schedule.measured == sum(start + k * period >= measure_from for k in range(total))
    clock, k, turns = random.Random(7), 0, 0
    now = int(start)
    while not schedule.done:
        now += clock.randrange(100_000, 5 * MS)
        expected, k = reference_turn(k, now, start, period, total, users, measure_from)
        turn = schedule.take(now)
        if not expected:
            assert turn is None
            continue
        assert turn is not None
        turns += 1
        assert (turn.batches, turn.skipped) == (expected, 0)
        assert list(turn.batches) == list(expected)  # the same writes, in the same order
        assert schedule.next == k
        assert 0 <= turn.lag_ns < 5 * MS
    assert turns > 0


def test_far_behind_each_turn_is_bounded_and_the_backlog_dropped() -> None:
    # 48 users asked for 64,000 msg/s each (3.07 M/s); the sender is 5 s late.
    users, start, period = 48, 0.0, 1e9 / (48 * 64_000)
    total = math.ceil(12e9 / period)
    schedule = SteadySchedule(start, period, total, users, measure_from=2e9)
    now = 5_000 * MS
    turn = schedule.take(now)
    assert turn is not None
    assert turn.count == TURN_BATCH  # not the 15 M messages due
    assert turn.lag_ns == now  # message 0 was due at 0
    # Whatever was due more than the backlog bound ago is dropped, and counted: 4 s of it,
    # of which 2 s were in the measured window.
    assert turn.skipped == math.floor((now - BACKLOG_NS) / period) + 1
    assert turn.skipped_measured == turn.skipped - math.ceil(2e9 / period)
    assert all(count <= TURN_BATCH for count in turn.batches.values())
    # Each turn of 1 ms moves the schedule by TURN_BATCH at most: never a backlog beyond
    # the bound again, never a turn beyond the batch, and everything is accounted for.
    sent, skipped = turn.count, turn.skipped
    while not schedule.done and now < 13_000 * MS:
        now += MS
        turn = schedule.take(now)
        assert turn is not None
        assert turn.count <= TURN_BATCH
        assert turn.lag_ns <= BACKLOG_NS + MS
        sent, skipped = sent + turn.count, skipped + turn.skipped
    last = schedule.give_up()
    skipped += last.skipped
    assert sent + skipped == total
    assert sent <= TURN_BATCH * (8_000 + 1)


def test_a_schedule_needs_sensible_bounds() -> None:
    with pytest.raises(ValueError):
        SteadySchedule(0, 0, 10, 1, 0)
    with pytest.raises(ValueError):
        SteadySchedule(0, 1, 10, 1, 0, batch=0)


class FakeClock:
    """Monotonic ns that move only when the sender yields: each turn of the loop costs
    ``turn_ns``, so a sender asked for more than ``TURN_BATCH / turn_ns`` falls behind."""

    def __init__(self, now: int, turn_ns: int) -> None:
        self.now, self.turn_ns, self.turns = now, turn_ns, 0

    def __call__(self) -> int:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.turns += 1
        self.now += max(self.turn_ns, int(delay * 1e9))
        await asyncio.sleep(0)


class FakeClient:
    """What the sender writes to, by the fake clock's time of each write."""

    closed = False

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.writes: list[tuple[int, bytes]] = []

    def write(self, data: bytes) -> None:
        self.writes.append((self.clock.now, data))


def _driven_worker(
    cfg: SteadyConfig, turn_ns: int
) -> tuple[LoadWorker, FakeClock, list[FakeClient]]:
    worker = LoadWorker(cfg, range(cfg.users))
    worker._use_rooms([f"r{i}" for i in range(cfg.rooms)])
    clock = FakeClock(10**12, turn_ns)
    worker.clock, worker.sleep = clock, clock.sleep
    clients = [FakeClient(clock) for _ in worker._users]
    for user, client in zip(worker._users, clients, strict=True):
        user.client = client  # type: ignore[assignment]
    return worker, clock, clients


def _lines(clients: list[FakeClient]) -> list[tuple[int, bytes]]:
    return [(at, line) for c in clients for at, data in c.writes for line in data.splitlines()]


async def test_a_sender_far_behind_writes_bounded_turns_and_the_report_says_so() -> None:
    # 4 users asked for 1 M msg/s each; a turn of the loop costs 50 ms: at most 1024
    # messages per 50 ms go out, some 20 K/s of the 4 M/s asked.
    cfg = SteadyConfig(users=4, rooms=2, rooms_per_user=1, rate=1e6, warmup=0.5, duration=1)
    worker, clock, clients = _driven_worker(cfg, 50 * MS)
    t0 = clock.now
    await worker._run_schedule(t0)
    tally = worker.tally
    lines = _lines(clients)
    per_turn: dict[int, int] = {}
    for at, _ in lines:
        per_turn[at] = per_turn.get(at, 0) + 1
    assert max(per_turn.values()) <= TURN_BATCH  # never more in one turn
    assert len(per_turn) <= clock.turns + 1  # and the loop ran between any two turns
    assert tally.sent == len(lines) <= TURN_BATCH * (clock.turns + 1)
    # Everything scheduled was either sent or skipped, and the skipped are counted.
    assert tally.sent + tally.skipped == 6_000_000  # 4 M/s over warm-up and window
    assert tally.scheduled_measured == 4_000_000
    assert tally.sent_measured + tally.skipped_measured == tally.scheduled_measured
    assert 0 < tally.max_send_lag_us <= (BACKLOG_NS + 50 * MS) // 1000
    # Sent messages were not held past the bound: each went out within it of its due
    # time, and a user's messages to a room still come in sequence (no holes for the
    # receivers to mistake for loss).
    seqs: dict[tuple[int, bytes], list[int]] = {}
    for at, line in lines:
        room = line.split(b'"r":"')[1].split(b'"')[0]
        stamp = parse_stamp(line.split(b'"c":"')[1].decode())
        assert stamp is not None
        sender, seq, sent, _ = stamp
        assert sent == at
        seqs.setdefault((sender, room), []).append(seq)
    assert all(s == list(range(len(s))) for s in seqs.values())
    # The report says the tool could not keep up, and by how much.
    result = WorkerResult(tally, 0, "", True, worker.room_names)
    report = build_report(cfg, [result], [], t0)
    assert report.load_tool_saturated
    assert report.skipped == tally.skipped > 0
    assert (report.messages_scheduled, report.messages_sent) == (4_000_000, tally.sent_measured)
    note = next(n for n in report.notes if "could not keep to its schedule" in n)
    assert f"it sent {tally.sent_measured:,} of the 4,000,000 messages due" in note
    assert "the tool's limit, not the server's" in note
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(report_table(report))
    row = next(line for line in console.export_text().splitlines() if "load tool kept up" in line)
    assert "no: the figures are the tool's limit" in row


async def test_a_sender_that_keeps_up_sends_everything_and_is_not_saturated() -> None:
    # 4 users at 50 msg/s, a turn every 1 ms of the fake clock: everything goes out on time.
    cfg = SteadyConfig(users=4, rooms=2, rooms_per_user=1, rate=50, warmup=0.2, duration=0.5)
    worker, clock, clients = _driven_worker(cfg, MS)
    t0 = clock.now
    await worker._run_schedule(t0)
    tally = worker.tally
    assert tally.sent == len(_lines(clients)) == 140  # 200 msg/s over 0.7 s
    assert (tally.skipped, tally.sent_measured, tally.scheduled_measured) == (0, 100, 100)
    assert tally.max_send_lag_us <= 1000
    report = build_report(cfg, [WorkerResult(tally, 0, "", True, worker.room_names)], [], t0)
    assert not report.load_tool_saturated
    assert not any("keep to its schedule" in note for note in report.notes)


# --- against a real server, in its own process ---------------------------------------------


@pytest.fixture
def served_log(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``roomchat serve`` in a subprocess on a free port, as the probe runs it (no flood
    limit, no store); yields its host:port and the file its log goes to."""
    log = tmp_path / "server.log"
    args = ["--host", "127.0.0.1", "--port", "0", "--flood-rate", "0", "--store", "memory://"]
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "roomchat", "serve", *args], stderr=out)
    try:
        address = None
        deadline = time.monotonic() + TIMEOUT
        while address is None and time.monotonic() < deadline and proc.poll() is None:
            if match := re.search(r"listening on (\S+:\d+)", log.read_text()):
                address = match.group(1)
            else:
                time.sleep(0.05)
        assert address is not None, "the server did not say where it listens"
        yield address, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_rate_the_tool_cannot_reach_is_reported_and_nobody_is_cut(
    served_log: tuple[str, Path],
) -> None:
    # 8 M msg/s asked: no Python load tool gets near it, on any machine. Before the turns
    # were bounded, the sender built seconds' worth of messages in one go while its users
    # read nothing, and the server cut them off as slow consumers.
    address, log = served_log
    host, port = address.rsplit(":", 1)
    cfg = SteadyConfig(
        host=host,
        port=int(port),
        users=8,
        rooms=4,
        rooms_per_user=1,
        rate=1e6,
        warmup=0.2,
        duration=1,
        check_every=2,
        drain_timeout=5,
    )
    report = await run_in_process(cfg)
    assert (report.connected, report.disconnected) == (8, 0)
    assert (report.duplicated, report.out_of_order, report.unexpected) == (0, 0, 0)
    assert report.load_tool_saturated
    assert 0 < report.messages_sent < report.messages_scheduled == 8_000_000
    assert report.skipped > 0
    assert any("could not keep to its schedule" in note for note in report.notes), report.notes
    assert "slow consumer" not in log.read_text()

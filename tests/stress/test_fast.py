"""The epoll engine (``roomchat stress steady --engine epoll``) against real servers:
every delivery counted exactly, a rate it cannot reach reported as the tool's limit, a
dropped session reported as lost.

Timing figures are reported by the tool, never asserted here.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from roomchat.server import ChatServer, ServerConfig
from roomchat.stress import Report, SteadyConfig, run_in_process
from roomchat.stress.rawload import EpollWorker
from roomchat.stress.report import build_report, report_table
from roomchat.stress.stats import Progress
from tests.helpers import TIMEOUT

REPORT_FIELDS = set(Report.__struct_fields__)


@pytest.fixture
async def fast_server() -> AsyncIterator[ChatServer]:
    """A server on an ephemeral port as the benchmarks run it: no flood limit, no store."""
    config = ServerConfig(host="127.0.0.1", port=0, flood_rate=0, store="memory://")
    srv = await ChatServer.start(config)
    try:
        yield srv
    finally:
        await srv.close()


def _epoll(port: int, **overrides: object) -> SteadyConfig:
    settings: dict[str, object] = {
        "port": port,
        "users": 8,
        "rooms": 4,
        "rooms_per_user": 1,
        "rate": 50,
        "duration": 1,
        "warmup": 0.3,
        "engine": "epoll",
    }
    settings.update(overrides)
    return SteadyConfig(**settings)  # type: ignore[arg-type]


def _assert_all_counted(report: Report, users: int, members: int) -> None:
    assert report.engine == "epoll"
    assert (report.connected, report.failed, report.disconnected) == (users, 0, 0)
    assert report.users_joined == users
    assert report.skipped == report.send_failed == report.send_blocked == 0
    assert report.messages_sent == report.messages_scheduled > 0
    # Every member of a room gets each message, its sender included.
    assert report.deliveries == report.deliveries_expected == report.messages_sent * members
    assert (report.lost, report.duplicated, report.protocol_errors) == (0, 0, 0)
    assert report.drained
    assert report.check_every == 0  # nobody decodes: everyone counts
    assert 0 < report.latency_ms.samples <= report.deliveries
    assert report.latency_ms.p50 <= report.latency_ms.p99 <= report.latency_ms.max
    assert report.load_tool_cpu_pct is not None
    assert any("epoll engine" in note for note in report.notes)
    assert set(json.loads(report.to_json())) == REPORT_FIELDS


async def test_rooms_of_two_every_delivery_counted(fast_server: ChatServer) -> None:
    report = await run_in_process(_epoll(fast_server.port))
    _assert_all_counted(report, users=8, members=2)
    assert report.messages_sent == 8 * 50  # 50 msg/s each over the 1 s window


async def test_users_in_several_rooms_send_to_each_in_turn(fast_server: ChatServer) -> None:
    # 8 users, 4 rooms, 2 each (round-robin): every room has 4 members.
    report = await run_in_process(_epoll(fast_server.port, rooms_per_user=2, rate=40))
    _assert_all_counted(report, users=8, members=4)


def _run_with_batch(cfg: SteadyConfig, batch: int) -> Report:
    """A whole run of the epoll engine whose turns write at most ``batch`` messages."""
    worker = EpollWorker(cfg, range(cfg.users), batch=batch)
    try:
        worker.prepare()
        t0 = time.monotonic_ns()
        worker.drain(worker.run(t0))
    finally:
        result = worker.result()
    return build_report(cfg, [result], [], t0)


async def test_a_rate_the_tool_cannot_reach_is_the_tools_limit(fast_server: ChatServer) -> None:
    # 80 M messages/s asked, and one message a turn: whatever the machine, the tool's
    # loop cannot turn that fast, while the server reads its few messages with ease.
    cfg = _epoll(fast_server.port, rate=1e7, duration=0.5, warmup=0.2, drain_timeout=1)
    report = await asyncio.to_thread(_run_with_batch, cfg, 1)
    assert report.connected == 8
    assert report.load_tool_saturated
    assert report.messages_scheduled == 40_000_000
    assert 0 < report.messages_sent < report.messages_scheduled
    assert report.skipped > 0
    assert any("could not keep to its schedule" in note for note in report.notes), report.notes
    assert any("the tool's limit, not the server's" in note for note in report.notes)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(report_table(report))
    row = next(line for line in console.export_text().splitlines() if "load tool kept up" in line)
    assert "no: the figures are the tool's limit" in row


async def test_a_server_that_stops_reading_is_the_servers_limit(fast_server: ChatServer) -> None:
    # The same rate against the server (in this process, so on this core): it cannot
    # read it all; what its sockets would not take, past a bound, is counted as such.
    cfg = _epoll(fast_server.port, rate=1e7, duration=0.5, warmup=0.2, drain_timeout=0.5)
    report = await run_in_process(cfg)
    assert report.connected == 8
    assert report.send_blocked > 0
    assert report.messages_sent < report.messages_scheduled
    assert any("the server had stopped reading" in note for note in report.notes)


async def test_a_session_the_server_drops_shows_as_lost(fast_server: ChatServer) -> None:
    loaded = threading.Event()

    def on_progress(progress: Progress) -> None:
        if progress.phase == "running" and progress.tally.sent_measured:
            loaded.set()

    cfg = _epoll(fast_server.port, duration=3, drain_timeout=1)
    run = asyncio.create_task(run_in_process(cfg, on_progress))
    assert await asyncio.to_thread(loaded.wait, TIMEOUT), "the load did not start"
    dropped = fast_server.sessions[0]
    dropped.abort("dropped by the test")
    report = await asyncio.wait_for(run, TIMEOUT + cfg.load_seconds())
    assert report.connected == 8
    assert report.disconnected == 1
    # Its partner's messages after the drop never reached it: counted, not hidden.
    assert report.lost > 0
    assert report.deliveries + report.lost == report.deliveries_expected
    assert not report.drained
    assert any("drain timeout" in note for note in report.notes)


async def test_the_tool_counts_exactly_against_the_mirror() -> None:
    # The stand-in server for the tool's own ceiling (roomchat.stress.mirror).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomchat.stress.mirror", stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
        match = re.search(rb"listening on \S+:(\d+)", line)
        assert match is not None, line
        report = await run_in_process(_epoll(int(match.group(1)), rate=200))
        _assert_all_counted(report, users=8, members=2)
    finally:
        proc.terminate()
        await proc.wait()


@pytest.fixture
def served() -> Iterator[str]:
    """``roomchat serve`` in a subprocess on a free port; yields its host:port."""
    args = ["--host", "127.0.0.1", "--port", "0", "--flood-rate", "0", "--store", "memory://"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomchat", "serve", *args], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        address = None
        for line in proc.stderr:  # the server logs its address first thing
            if match := re.search(r"listening on (\S+:\d+)", line):
                address = match.group(1)
                break
        assert address is not None, "the server did not say where it listens"
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_epoll_engine_over_two_processes(served: str) -> None:
    args = ["--addr", served, "--users", "8", "--rooms", "4", "--rooms-per-user", "1"]
    args += ["--rate", "100", "--duration", "1", "--warmup", "0.3", "--processes", "2"]
    engine = ["--engine", "epoll", "--json", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "roomchat", "stress", "steady", *args, *engine],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    report = msgspec.json.decode(lines[0], type=Report)
    assert report.processes == 2
    assert report.engine == "epoll"
    assert (report.connected, report.lost, report.duplicated, report.disconnected) == (8, 0, 0, 0)
    assert report.deliveries == report.deliveries_expected == report.messages_sent * 2 == 1600
    assert report.load_tool_cpu_pct is not None


def test_cli_epoll_engine_refuses_what_it_cannot_speak() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "roomchat", "stress", "steady", "--engine", "epoll", "--v2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "the epoll engine speaks plain-TCP v1" in done.stderr

"""Short, bounded stress runs against a real server: everything sent is delivered once.

Timing figures are reported by the tool, never asserted here.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from roomchat.server import ChatServer, ServerConfig
from roomchat.server.bus.redis import RedisBus
from roomchat.stress import (
    RampConfig,
    Report,
    SteadyConfig,
    StressError,
    parse_steps,
    run_in_process,
)
from roomchat.stress.config import rooms_of_user
from roomchat.stress.report import build_report, report_table
from roomchat.stress.worker import LoadWorker
from tests.fake_v2 import FakeV2Server
from tests.helpers import TIMEOUT
from tests.redis_servers import RedisServer

REPORT_FIELDS = set(Report.__struct_fields__)
LATENCY_FIELDS = {"samples", "p50", "p90", "p99", "p999", "max"}


def assert_consistent(report: dict[str, Any]) -> None:
    """The report's fields agree with each other."""
    assert set(report) == REPORT_FIELDS
    latency = report["latency_ms"]
    assert isinstance(latency, dict)
    assert set(latency) == LATENCY_FIELDS
    assert report["deliveries"] + report["lost"] == report["deliveries_expected"]
    if report["check_every"] == 1:
        assert latency["samples"] == report["deliveries"]
    else:  # only the checking users' deliveries are timed
        assert 0 < latency["samples"] < report["deliveries"]
    assert latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    window = report["window_s"]
    assert isinstance(window, float)
    assert report["messages_per_s"] == pytest.approx(report["messages_sent"] / window, abs=0.1)
    span = max(window, report["delivery_span_s"])
    # delivery_span_s is rounded to the millisecond in the report: allow for that.
    assert report["deliveries_per_s"] == pytest.approx(report["deliveries"] / span, rel=1e-3)
    assert report["window_end_ns"] - report["window_start_ns"] == pytest.approx(window * 1e9)


def assert_all_delivered(report: Report, users: int) -> None:
    assert (report.connected, report.failed, report.disconnected) == (users, 0, 0)
    assert report.deliveries_expected > 0
    assert report.deliveries == report.deliveries_expected
    assert (report.lost, report.duplicated, report.out_of_order) == (0, 0, 0)
    assert (report.unexpected, report.protocol_errors, report.send_failed) == (0, 0, 0)
    assert report.skipped == 0
    assert report.drained
    assert_consistent(json.loads(report.to_json()))


async def test_steady_run_delivers_every_message_to_every_member(server: ChatServer) -> None:
    cfg = SteadyConfig(
        port=server.port, users=12, rooms=6, rooms_per_user=2, rate=20, duration=1, warmup=0.3
    )
    report = await run_in_process(cfg)
    assert_all_delivered(report, 12)
    members = [sum(r in rooms_of_user(u, 6, 2) for u in range(12)) for r in range(6)]
    assert members == [4] * 6
    assert report.deliveries_expected == report.messages_sent * 4
    assert report.joins_confirmed == 24
    assert len(set(report.rooms_used)) == 6


async def test_users_split_over_two_instances_lose_nothing(redis_server: RedisServer) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, bus_url=redis_server.url)
    one, two = await ChatServer.start(config), await ChatServer.start(config)
    try:
        cfg = SteadyConfig(
            port=one.port,
            more_addrs=(("127.0.0.1", two.port),),
            users=12,
            rooms=3,
            rooms_per_user=2,
            rate=20,
            duration=1,
            warmup=0.3,
        )
        report = await run_in_process(cfg)
        assert_all_delivered(report, 12)
        assert report.addr == f"127.0.0.1:{one.port},127.0.0.1:{two.port}"
        # Users on both instances sent, through Redis, to rooms shared by both.
        for instance in (one, two):
            assert isinstance(instance.bus, RedisBus)
            assert instance.bus.stats.published > 0
            assert instance.bus.stats.received > 0
    finally:
        await one.close()
        await two.close()


async def test_counting_users_see_everything_the_checking_ones_do(server: ChatServer) -> None:
    # Users 0, 3, 6, 9 check each delivery; the other eight count theirs in bulk,
    # undecoded. Many small messages make lines straddle reads, which the count survives.
    cfg = SteadyConfig(
        port=server.port,
        users=12,
        rooms=3,
        rooms_per_user=2,
        rate=200,
        duration=1,
        warmup=0.2,
        payload=40,
        check_every=3,
    )
    report = await run_in_process(cfg)
    assert_all_delivered(report, 12)
    assert report.check_every == 3
    assert report.joins_confirmed == 24
    assert report.deliveries_expected == report.messages_sent * 8  # 8 members per room


async def test_tiny_ramp_counts_each_member_from_when_it_joined(server: ChatServer) -> None:
    # Driven step by step (as run_in_process does) to look at what each user did.
    steps = parse_steps("6/0.6/3,10/0.6/2")
    cfg = RampConfig(port=server.port, steps=steps, delay=0.1, rooms=4, rooms_per_user=2)
    worker = LoadWorker(cfg, range(cfg.users))
    await worker.prepare()
    t0 = time.monotonic_ns() + 10**8
    log = await worker.run(t0)
    await worker.drain(log)
    report = build_report(cfg, [await worker.result()], [], t0)
    assert_all_delivered(report, 10)
    assert (report.mode, report.warmup_s, report.users_joined) == ("ramp", 0.0, 10)
    users = worker._users
    # Each user arrived with its load increment, not before: 2 at 0, 0.2, 0.4, 0.6, 0.9 s.
    starts = cfg.start_times()
    for user in users:
        assert user.connect_ns >= t0 + starts[user.index] * 1e9
        assert len(user.joined_at) == 2 and min(user.joined_at.values()) > user.connect_ns
    # The members of a room are expected to get exactly what was sent to it after they
    # joined: the run's own sent log and join times add up to the report's expectation.
    assert log.stamps is not None
    assert sum(len(stamps) for stamps in log.stamps) == report.messages_sent
    expected = sum(
        sum(sent >= joined for sent in log.stamps[room])
        for user in users
        for room, joined in user.joined_at.items()
    )
    assert report.deliveries == report.deliveries_expected == expected
    # ... which is less than everything sent times the 5 members of each room: the last
    # users, arriving at 0.9 s, were not expected to get user 0's first messages.
    assert expected < report.messages_sent * 5
    first_sent = min(stamps[0] for stamps in log.stamps if stamps)
    assert max(u.joined_at[r] for u in users for r in u.joined_at) > first_sent


async def test_users_arriving_at_a_rate_join_then_lose_nothing(server: ChatServer) -> None:
    # 20 users at 100/s: arrivals span 0.19 s. The join bound is generous (timings are
    # the benchmark's business): this checks what is counted, not how fast.
    cfg = SteadyConfig(
        port=server.port,
        users=20,
        rooms=4,
        rooms_per_user=2,
        rate=5,
        duration=0.5,
        warmup=0.2,
        connect_rate=100,
        join_bound=TIMEOUT,
    )
    report = await run_in_process(cfg)
    assert_all_delivered(report, 20)
    assert report.connect_rate == 100
    assert (report.users_joined, report.joins_confirmed, report.users_joined_late) == (20, 40, 0)
    assert report.joins_kept_up
    assert report.join_s > 0.15  # at least the arrivals' span, less a first user's start
    assert report.join_start_ns < report.join_end_ns <= report.start_ns  # joined, then sent
    assert report.join_time_ms.samples == report.login_time_ms.samples == 20
    assert 0 < report.join_time_ms.p50 <= report.join_time_ms.max <= report.join_s * 1000
    assert 0 < report.login_time_ms.max <= report.join_time_ms.max  # login comes first
    assert report.deliveries_expected == report.messages_sent * 10  # 10 members per room


async def test_a_server_with_too_few_rooms_is_an_error(server: ChatServer) -> None:
    cfg = SteadyConfig(port=server.port, users=1, rooms=1000, rooms_per_user=1, duration=1)
    with pytest.raises(StressError, match="rooms"):
        await run_in_process(cfg)


@pytest.fixture
def served() -> Iterator[str]:
    """``roomchat serve`` in a subprocess on a free port; yields its host:port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomchat", "serve", "--host", "127.0.0.1", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
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


def test_cli_steady_with_two_processes_prints_one_json_line(served: str) -> None:
    args = ["--addr", served, "--users", "8", "--rooms", "4", "--rooms-per-user", "2"]
    args += ["--rate", "20", "--duration", "1", "--warmup", "0.2", "--processes", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "roomchat", "stress", "steady", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert_consistent(report)
    assert report["processes"] == 2
    assert (report["connected"], report["lost"], report["duplicated"]) == (8, 0, 0)
    assert report["deliveries"] == report["deliveries_expected"] == report["messages_sent"] * 4


def test_cli_connect_rate_over_two_processes(served: str) -> None:
    args = ["--addr", served, "--users", "10", "--rooms", "4", "--rooms-per-user", "2"]
    args += ["--rate", "5", "--duration", "0.5", "--warmup", "0.2", "--processes", "2"]
    args += ["--connect-rate", "50", "--join-bound", str(TIMEOUT)]
    done = subprocess.run(
        [sys.executable, "-m", "roomchat", "stress", "steady", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert_consistent(report)
    assert (report["connect_rate"], report["join_bound_s"]) == (50, TIMEOUT)
    assert (report["users_joined"], report["users_joined_late"]) == (10, 0)
    assert report["joins_kept_up"] is True
    # One arrival schedule over both processes: the last of 10 at 50/s starts at 0.18 s.
    assert report["join_s"] > 0.15
    assert report["join_time_ms"]["samples"] == 10
    assert (report["connected"], report["lost"], report["duplicated"]) == (10, 0, 0)


def test_cli_rejects_a_negative_connect_rate() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "roomchat", "stress", "steady", "--connect-rate", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "connect-rate must be >= 0" in done.stderr


def test_cli_says_plainly_when_nothing_listens() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "roomchat", "stress", "steady", "--addr", "127.0.0.1:1"),
            *("--users", "2", "--duration", "0.5", "--warmup", "0", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "no user could connect to 127.0.0.1:1" in done.stderr


# --- protocol v2 (against the fake v2 server, tests/fake_v2.py) ---------------------------


@pytest.mark.parametrize("check_every", [1, 2])
async def test_v2_run_reports_the_version_and_errors_by_code(check_every: int) -> None:
    async with FakeV2Server() as fake:
        fake.error_on_send = ("rate_limited", "slow down")
        cfg = SteadyConfig(
            port=fake.port,
            users=4,
            rooms=2,
            rooms_per_user=1,
            rate=10,
            duration=0.5,
            warmup=0,
            check_every=check_every,
            v2=True,
            name_prefix="load-",
        )
        report = await run_in_process(cfg)
    assert report.protocol_version == 2
    assert report.names == "load-0, load-1, ..."
    assert sorted(h.name for h in fake.hellos()) == ["load-0", "load-1", "load-2", "load-3"]
    # v2 user_message lines (with ,"q":..,"ts":..) are counted and checked as in v1
    assert_all_delivered(report, 4)
    assert report.deliveries == report.messages_sent * 2
    # every send was answered with an error: each sender counted its own
    assert report.errors_by_code == {"rate_limited": report.messages_sent}
    table = _table_text(report)
    assert f"rate_limited {report.messages_sent:,}" in table
    assert "v2, names load-0, load-1, ..." in table


async def test_v2_run_counts_refused_hellos() -> None:
    async with FakeV2Server() as fake:
        fake.refuse["u1"] = "name_taken"
        cfg = SteadyConfig(
            port=fake.port,
            users=2,
            rooms=2,
            rooms_per_user=1,
            rate=5,
            duration=0.3,
            warmup=0,
            v2=True,
            name_prefix="u",
        )
        report = await run_in_process(cfg)
    assert (report.connected, report.failed) == (1, 1)
    assert report.errors_by_code == {"name_taken": 1}


async def test_v2_against_a_v1_server_falls_back_and_says_so() -> None:
    # A server that does not speak v2 (as the original): its hello goes unanswered.
    async with FakeV2Server() as v1_server:
        v1_server.speaks_v2 = False
        cfg = SteadyConfig(
            port=v1_server.port,
            users=2,
            rooms=2,
            rooms_per_user=1,
            rate=5,
            duration=0.3,
            warmup=0,
            v2=True,
        )
        report = await run_in_process(cfg)
    assert report.protocol_version == 1
    assert any("stayed in v1" in note for note in report.notes), report.notes
    assert_all_delivered(report, 2)
    assert report.errors_by_code == {}


async def test_v1_run_reports_version_1_and_no_errors(server: ChatServer) -> None:
    cfg = SteadyConfig(port=server.port, users=2, rooms=2, rooms_per_user=1, rate=5, duration=0.3)
    report = await run_in_process(cfg)
    assert (report.protocol_version, report.errors_by_code, report.names) == (1, {}, None)
    assert not any("v1" in note for note in report.notes)


def test_name_prefix_needs_v2_and_a_valid_name() -> None:
    with pytest.raises(ValueError, match="needs v2"):
        SteadyConfig(name_prefix="u")
    with pytest.raises(ValueError, match="name prefix"):
        SteadyConfig(name_prefix="no spaces", v2=True)
    assert SteadyConfig(name_prefix="u", v2=True).name_of(12) == "u12"
    assert SteadyConfig().name_of(12) is None


def test_cli_name_prefix_without_v2_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "roomchat", "stress", "steady", "--name-prefix", "u"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "needs v2" in done.stderr


def _table_text(report: Report) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(report_table(report))
    return console.export_text()

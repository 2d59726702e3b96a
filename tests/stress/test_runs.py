"""Short, bounded stress runs against a real server: everything sent is delivered once.

Timing figures are reported by the tool, never asserted here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomchat.server import ChatServer
from roomchat.stress import (
    RampConfig,
    Report,
    SteadyConfig,
    StressError,
    parse_steps,
    run_in_process,
)
from roomchat.stress.config import rooms_of_user

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
    steps = parse_steps("6/0.6/3,10/0.6/2")
    cfg = RampConfig(port=server.port, steps=steps, delay=0.1, rooms=4, rooms_per_user=2)
    report = await run_in_process(cfg)
    assert_all_delivered(report, 10)
    assert report.mode == "ramp"
    assert report.messages_sent > 0
    assert report.warmup_s == 0.0


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

"""``roomchat serve --log-format json`` and ``--metrics`` as a user runs them (a real
subprocess), and the JSON formatter on its own."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from roomchat.client import connect
from roomchat.protocol import UserJoinedRoom
from roomchat.server.ops.logs import JsonFormatter
from tests.instances import spawn_serve
from tests.serve_cli import LISTENING, TIMEOUT, Served, assert_one_clean_line, run_roomchat

METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


async def start(*args: str, env: dict[str, str] | None = None) -> tuple[Served, list[bytes]]:
    """``roomchat serve`` on a free port; the server and its stderr lines up to listening."""
    process = await spawn_serve(*args, env=env)
    assert process.stderr is not None
    lines: list[bytes] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            line = await process.stderr.readline()
            assert line, b"".join(lines)
            lines.append(line)
            match = LISTENING.search(line)
            if match:
                return Served(process, int(match.group(1)), int(match.group(2))), lines


async def stop(served: Served, lines: list[bytes]) -> list[str]:
    """SIGTERM; every stderr line of the run."""
    served.process.send_signal(signal.SIGTERM)
    assert served.process.stderr is not None
    async with asyncio.timeout(TIMEOUT):
        rest = await served.process.stderr.read()
        assert await served.process.wait() == 0
    return b"".join([*lines, rest]).decode().splitlines()


async def logged(served: Served, lines: list[bytes], found: Callable[[bytes], bool]) -> None:
    """Read stderr into ``lines`` until ``found(line)`` holds for one (bounded by TIMEOUT)."""
    assert served.process.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            while not any(found(line) for line in lines):
                line = await served.process.stderr.readline()
                assert line, b"".join(lines)  # the server exited without logging it
                lines.append(line)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for a log line: {b''.join(lines)!r}") from None


def json_disconnect(user: str) -> Callable[[bytes], bool]:
    def found(line: bytes) -> bool:
        record = json.loads(line)
        return bool(record.get("user") == user and "disconnected" in record["event"])

    return found


def text_disconnect(user: str) -> Callable[[bytes], bool]:
    pattern = re.compile(rf"<session \S+ user {re.escape(user)} from \S+> disconnected: ".encode())
    return lambda line: pattern.search(line) is not None


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(TIMEOUT):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def a_short_session(port: int) -> str:
    """Connect, join, send a bad line, quit; the user id."""
    client = await connect("127.0.0.1", port, timeout=TIMEOUT)
    await client.join("general")
    assert isinstance(await client.next_event(TIMEOUT), UserJoinedRoom)
    client.write(b"not json\r\n")
    await client.quit()
    await client.wait_closed()
    return client.user_id


async def test_json_lines_all_parse_with_their_fields() -> None:
    served, lines = await start("--log-format", "json", "--metrics", "127.0.0.1:0")
    user = await a_short_session(served.port)
    await logged(served, lines, json_disconnect(user))
    records: list[dict[str, Any]] = [json.loads(line) for line in await stop(served, lines)]

    for record in records:
        assert {"time", "level", "logger", "event"} <= set(record), record
        assert record["time"].endswith("Z")
        assert datetime.fromisoformat(record["time"]).utcoffset() is not None
        assert record["level"] in ("debug", "info", "warning", "error", "critical")
    events = [record["event"] for record in records]
    assert any(LISTENING.search(event.encode()) for event in events), events
    assert any(METRICS.search(event) for event in events), events

    mine = [record for record in records if record.get("user") == user]
    connected = next(r for r in mine if r["event"].endswith(" connected"))
    assert set(connected) >= {"session", "user", "peer"}
    assert connected["peer"].startswith("127.0.0.1:")
    assert len(connected["session"]) == 21
    ignored = next(r for r in mine if "ignored" in r["event"])
    assert ignored["level"] == "warning"
    assert ignored["reason"].startswith("bad line")
    disconnected = next(r for r in mine if "disconnected" in r["event"])
    assert disconnected["reason"] == "quit"
    assert disconnected["session"] == connected["session"]


async def test_text_format_is_as_readable_as_before() -> None:
    served, lines = await start()
    user = await a_short_session(served.port)
    await logged(served, lines, text_disconnect(user))
    text = "\n".join(await stop(served, lines))
    assert re.search(
        rf"INFO roomchat\.server: <session \S+ user {user} from 127\.0\.0\.1:\d+> connected", text
    )
    assert re.search(rf"<session \S+ user {user} from \S+> disconnected: quit", text)
    assert "{" not in text.split("listening")[0]


async def test_env_var_picks_json() -> None:
    env = {**os.environ, "ROOMCHAT_LOG_FORMAT": "json", "ROOMCHAT_METRICS": "127.0.0.1:0"}
    served, lines = await start(env=env)
    records = [json.loads(line) for line in await stop(served, lines)]
    assert any(METRICS.search(record["event"]) for record in records)


async def test_metrics_address_is_logged_and_answers() -> None:
    served, lines = await start("--metrics", "127.0.0.1:0")
    try:
        async with asyncio.timeout(TIMEOUT):
            assert served.process.stderr is not None
            while not (match := METRICS.search(lines[-1].decode())):
                lines.append(await served.process.stderr.readline())
        port = int(match.group(1))
        assert await http_get(port, "/healthz") == (200, b"ok\n")
        assert await http_get(port, "/readyz") == (200, b"ready\n")
        status, body = await http_get(port, "/metrics")
        assert status == 200
        assert b"roomchat_connections_open 0.0" in body
    finally:
        await stop(served, lines)


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1:http", "127.0.0.1:70000"])
async def test_bad_metrics_address_is_one_line(value: str) -> None:
    status, stderr = await run_roomchat("serve", "--port", "0", "--metrics", value)
    assert status == 2
    assert_one_clean_line(stderr, "--metrics")


async def test_bad_log_format_is_one_line() -> None:
    status, stderr = await run_roomchat("serve", "--log-format", "xml")
    assert status == 2
    assert_one_clean_line(stderr)


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "roomchat.server", logging.WARNING, __file__, 1, "%s!", ("hi",), None
    )
    record.__dict__.update(extra)
    return record


def test_formatter_emits_extra_fields_and_survives_odd_values() -> None:
    line = JsonFormatter().format(_record(session="s", reason=ValueError("x"), count=3))
    record = json.loads(line)
    assert record["event"] == "hi!"
    assert record["level"] == "warning"
    assert record["logger"] == "roomchat.server"
    assert record["session"] == "s"
    assert record["count"] == 3
    assert record["reason"] == "ValueError('x')"
    assert "\n" not in line


def test_formatter_keeps_tracebacks_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record(exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exc"]

"""``roomchat serve`` as a user runs it: a real subprocess, its exit status and stderr."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomchat.client import connect
from roomchat.protocol import UserJoinedRoom
from tests.serve_cli import (
    TIMEOUT,
    Served,
    assert_one_clean_line,
    run_roomchat,
    start_serve,
)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    srv = await start_serve()
    try:
        yield srv
    finally:
        if srv.process.returncode is None:
            srv.process.kill()
            await srv.process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_sessions_and_exits_zero(served: Served, signum: int) -> None:
    client = await connect("127.0.0.1", served.port, timeout=TIMEOUT)
    await client.join("general")
    assert isinstance(await client.next_event(TIMEOUT), UserJoinedRoom)
    served.process.send_signal(signum)
    async with asyncio.timeout(TIMEOUT):
        await client.wait_closed()
        status = await served.process.wait()
    assert status == 0
    assert served.rooms >= 20


async def test_env_var_sets_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rooms = tmp_path / "rooms.json"
    rooms.write_text('[{"name": "only", "description": "the one room"}]')
    monkeypatch.setenv("ROOMCHAT_ROOMS", str(rooms))
    srv = await start_serve()
    try:
        assert srv.rooms == 1
        client = await connect("127.0.0.1", srv.port, timeout=TIMEOUT)
        assert [r.name for r in client.rooms] == ["only"]
        client.close()
    finally:
        srv.process.terminate()
        assert await asyncio.wait_for(srv.process.wait(), TIMEOUT) == 0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("not json at all", "not a valid rooms list"),
        ('{"name": "a", "description": "b"}', "not a valid rooms list"),
        ('[{"name": "a"}]', "description"),
        ('[{"name": "a", "description": "b"}, {"name": "a", "description": "c"}]', "duplicate"),
        ('[{"name": "", "description": "b"}]', "empty name"),
        ("[]", "empty"),
    ],
)
async def test_bad_rooms_file_is_one_line_and_nonzero(
    tmp_path: Path, content: str | None, needle: str
) -> None:
    rooms = tmp_path / "rooms.json"
    if content is not None:
        rooms.write_text(content)
    status, stderr = await run_roomchat("serve", "--port", "0", "--rooms", str(rooms))
    assert status != 0
    assert_one_clean_line(stderr, needle)


async def test_port_in_use_is_one_line_and_nonzero() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, stderr = await run_roomchat("serve", "--host", "127.0.0.1", "--port", str(port))
    assert status != 0
    assert_one_clean_line(stderr, f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "not-a-number"],
        ["serve", "--port", "70000"],
        ["serve", "--no-such-flag"],
        ["serve", "--log-level", "chatty"],
        ["no-such-command"],
    ],
)
async def test_bad_flag_is_one_line_and_nonzero(args: list[str]) -> None:
    status, stderr = await run_roomchat(*args)
    assert status == 2
    assert_one_clean_line(stderr)


async def test_help_lists_the_commands() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomchat", "--help", stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 0
    for name in (b"serve", b"tui", b"stress"):
        assert name in stdout


async def _stuck_sessions(port: int, count: int) -> list[socket.socket]:
    """Sessions in "general" that stop reading while a sender floods the room, so that
    the server has output queued for them that it cannot flush: closing them has to wait
    for the shutdown grace. The sender stays connected (and reads): ``count`` + 1
    sessions are open at the shutdown."""
    loop = asyncio.get_running_loop()
    stuck: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b'{"_ct":"join_room","r":"general"}\n')
        stuck.append(sock)
    routed = loop.create_future()
    tail = bytearray()

    def on_data(data: bytes) -> None:
        # The sender gets its own messages too: the last one back means all were routed.
        tail[:] = tail[-16:] + data
        if b"LAST" in tail and not routed.done():
            routed.set_result(None)

    sender = await connect("127.0.0.1", port, timeout=TIMEOUT, on_data=on_data)
    await sender.join("general")
    line = b'{"_ct":"send_message","r":"general","c":"' + b"x" * 4000 + b'"}\n'
    for _ in range(3000):  # 12 MB to each member: more than the kernel buffers take
        sender.write(line)
    sender.write(b'{"_ct":"send_message","r":"general","c":"LAST"}\n')
    await asyncio.wait_for(routed, TIMEOUT)
    return stuck


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("gap", [0.01, 0.5])
async def test_second_signal_makes_the_shutdown_immediate(second: int, gap: float) -> None:
    srv = await start_serve("--max-pending-output", str(64 * 1024 * 1024))
    stuck = await _stuck_sessions(srv.port, 3)
    try:
        srv.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(gap)  # the gap between the two signals is the test's subject
        srv.process.send_signal(second)
        assert srv.process.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            stderr = (await srv.process.stderr.read()).decode()
            status = await srv.process.wait()
    finally:
        for sock in stuck:
            sock.close()
        if srv.process.returncode is None:
            srv.process.kill()
            await srv.process.wait()
    assert status == 0, stderr
    assert "server closed (4 sessions were open)" in stderr, stderr
    assert stderr.rstrip().endswith("server closed (4 sessions were open)"), stderr
    assert "again: aborting the sessions left" in stderr, stderr
    assert "Traceback" not in stderr
    # The second signal, not the end of the 2 s shutdown grace, ended the wait.
    assert re.search(r"aborting the \d+ sessions that had not flushed yet", stderr), stderr
    assert "within the 2 s grace" not in stderr, stderr


async def test_one_signal_waits_for_the_grace_with_stuck_sessions() -> None:
    """The case the second signal cuts short: without it, the close takes the grace."""
    srv = await start_serve("--max-pending-output", str(64 * 1024 * 1024))
    stuck = await _stuck_sessions(srv.port, 3)
    try:
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            stderr = (await srv.process.stderr.read()).decode()
            status = await srv.process.wait()
    finally:
        for sock in stuck:
            sock.close()
    assert status == 0, stderr
    assert re.search(r"\d+ sessions did not flush within the 2 s grace", stderr), stderr
    assert stderr.rstrip().endswith("server closed (4 sessions were open)"), stderr

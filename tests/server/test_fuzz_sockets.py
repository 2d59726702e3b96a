"""Hostile input over real sockets, as a property (hypothesis).

One real :class:`~roomchat.server.ChatServer` (``max_line_length`` 4096, so that lines
over the limit are cheap) serves the whole test. Each example opens a *healthy pair* of
:mod:`roomchat.client` sessions (one v1, one v2 with a chosen name), both in a room of
their own and in a room the fuzzers also use, then lets eight raw-socket clients loose
at once. Each fuzzer sends a random byte stream made of:

- valid commands, v1 and v2 (``join_room``/``leave_room``/``send_message``/``quit``,
  ``hello`` with random versions, names, tokens and ids, ``ping``/``pong``, ``h``,
  ``after``), the same truncated at a random byte, with invalid UTF-8 spliced in, or
  with random fields of wrong types;
- random bytes, deeply nested JSON (arrays, objects, inside a command's field), blank
  and whitespace-only lines, lines just under and just over the limit;
- terminated by ``\\n``, ``\\r\\n``, a lone ``\\r`` or nothing, and cut into packets at
  random points;

and then ends by closing, aborting (RST), half-closing (and reading until the server
closes), or staying open without reading while the pair talks.

The property, for every example: once the fuzzers are done sending, the pair exchanges
messages in both rooms and each of them receives every one of them, in order, exactly
once; after the fuzzers are gone, a new client still logs in; and the server never
logged an exception (no record at WARNING or above with ``exc_info`` or a traceback)
nor reached the event loop's exception handler (``Exception in callback ...``).
Nothing sleeps for a fixed time: the test waits for the server to have dropped every
fuzzer connection.

``make test`` runs a modest number of examples (about 10 s). To run it longer, use the
"long" settings profile registered in tests/conftest.py (1000 examples: a few minutes;
lift pytest-timeout's per-test limit)::

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/server/test_fuzz_sockets.py --timeout=0
    .venv/bin/pytest tests/server/test_fuzz_sockets.py --hypothesis-profile=long --timeout=0

Add ``--hypothesis-seed=N`` to replay or vary a run; a failure prints the example that
broke it, shrunk.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomchat import tokens
from roomchat.client import ChatClient, connect
from roomchat.protocol import UserMessage
from roomchat.server import ChatServer, ServerConfig
from tests.helpers import TIMEOUT, raw_socket, until

DEFAULT_RUN = settings.get_current_profile_name() == "default"
if DEFAULT_RUN:
    RUN = settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
else:  # "long" (or any profile chosen on purpose): its numbers decide
    RUN = settings(
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )

MAX_LINE = 4096
FUZZERS = 8
#: The pair's room of its own: no fuzzer ever names it.
PRIVATE = "pets"
#: The room the pair shares with the fuzzers.
SHARED = "general"
ROOMS = ("general", "random", "help", "python", "rust")
PAIR_MESSAGES = 5

# -- strategies ---------------------------------------------------------------------------

ROOM = st.one_of(st.sampled_from(ROOMS), st.text(max_size=8)).filter(lambda r: r != PRIVATE)
#: Any code point, lone surrogates included (sent as JSON escapes or as invalid UTF-8).
TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
#: The server's token secret: the fuzzers can present valid tokens too.
SECRET = b"roomchat-fuzz-secret-0123456789abcdef"
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
CMD_ID = st.one_of(st.none(), st.text(max_size=70), ANY_JSON)
NAMES = ("alice", "bob", "zed", "Ünï", "")
NAME = st.one_of(st.none(), st.sampled_from(NAMES), TEXT)
TOKEN = st.one_of(
    st.none(),
    TEXT,
    st.builds(lambda t, s: f"{t}.{s}", st.integers(-5, 2**40), st.from_regex(r"[\w-]{0,44}")),
    # valid (far future) or expired tokens for the usual names
    st.builds(tokens.mint, st.just(SECRET), st.sampled_from(NAMES), st.sampled_from([1, 2**33])),
)


def _cmd(ct: str, **fields: Any) -> dict[str, Any]:
    return {"_ct": ct, **{k: v for k, v in fields.items() if v is not None}}


COMMAND = st.one_of(
    st.builds(lambda r, i: _cmd("join_room", r=r, id=i), ROOM, CMD_ID),
    st.builds(
        lambda r, h, a, i: _cmd("join_room", r=r, h=h, after=a, id=i),
        ROOM,
        st.one_of(st.none(), st.integers(-3, 200), ANY_JSON),
        st.one_of(st.none(), st.integers(-3, 2**64), ANY_JSON),
        CMD_ID,
    ),
    st.builds(lambda r, i: _cmd("leave_room", r=r, id=i), ROOM, CMD_ID),
    st.builds(lambda r, c, i: _cmd("send_message", r=r, c=c, id=i), ROOM, TEXT, CMD_ID),
    st.builds(lambda i: _cmd("quit", id=i), CMD_ID),
    st.builds(lambda i: _cmd("ping", id=i), CMD_ID),
    st.just(_cmd("pong")),
    st.builds(
        lambda v, n, t, i: _cmd("hello", v=v, name=n, token=t, id=i),
        st.one_of(st.integers(-1, 5), st.sampled_from([2**70, "2", 2.0, None, True])),
        NAME,
        TOKEN,
        CMD_ID,
    ),
    # a known command with a field of any type, or an unknown one
    st.builds(
        lambda ct, k, v: {"_ct": ct, k: v},
        st.sampled_from(["join_room", "leave_room", "send_message", "hello", "dance", ""]),
        st.sampled_from(["r", "c", "v", "name", "token", "h", "after", "id", "_ct"]),
        ANY_JSON,
    ),
)


def _encode(command: dict[str, Any], ascii_only: bool) -> bytes:
    text = json.dumps(command, ensure_ascii=ascii_only, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def valid_line(draw: st.DrawFn) -> bytes:
    return _encode(draw(COMMAND), draw(st.booleans()))


@st.composite
def mangled_line(draw: st.DrawFn) -> bytes:
    line = draw(valid_line())
    how = draw(st.sampled_from(["truncate", "invalid_utf8", "surrogate", "flip"]))
    at = draw(st.integers(0, len(line)))
    if how == "truncate":
        return line[:at]
    if how == "invalid_utf8":
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"]))
        return line[:at] + junk + line[at:]
    if how == "surrogate":  # a lone surrogate, as JSON escape or as (invalid) UTF-8 bytes
        bad = draw(
            st.sampled_from([b"\\ud800", b"\\udfff", "\udc80".encode(errors="surrogatepass")])
        )
        return line[:at] + bad + line[at:]
    if not line:
        return line
    pos = min(at, len(line) - 1)
    return line[:pos] + bytes([draw(st.integers(0, 255))]) + line[pos + 1 :]


@st.composite
def nested_line(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 2000))
    kind = draw(st.sampled_from(["array", "object", "in_field", "unclosed"]))
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "in_field":
        field = draw(st.sampled_from([b"r", b"c", b"id", b"v", b"name"]))
        return b'{"_ct":"send_message","' + field + b'":' + b"[" * depth + b"]" * depth + b"}"
    return b"[" * depth


@st.composite
def long_line(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([MAX_LINE - 2, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1]))
    size += draw(st.integers(0, 3 * MAX_LINE)) if draw(st.booleans()) else 0
    prefix = b'{"_ct":"send_message","r":"general","c":"'
    body = prefix + b"x" * max(0, size - len(prefix) - 2) + b'"}'
    return body if draw(st.booleans()) else b"y" * size


LINE = st.one_of(
    valid_line(),
    mangled_line(),
    st.binary(max_size=80),
    nested_line(),
    st.sampled_from([b"", b" ", b"\t", b" \t  ", b"\r", b"\x00", b"\x0b\x0c"]),
    long_line(),
)
TERMINATOR = st.sampled_from([b"\n", b"\r\n", b"\n", b"\r\n", b"\r", b""])
ENDING = st.sampled_from(["close", "abort", "half_close", "linger"])


@dataclass(frozen=True)
class Fuzzer:
    chunks: tuple[bytes, ...]
    ending: str

    def __repr__(self) -> str:  # readable when hypothesis prints a failing example
        shown = [c if len(c) <= 120 else c[:60] + b"..." + c[-20:] for c in self.chunks]
        return f"Fuzzer({shown!r}, {self.ending!r})"


@st.composite
def fuzzer(draw: st.DrawFn) -> Fuzzer:
    lines: list[bytes] = []
    if draw(st.booleans()):  # a hello first: the session may go v2
        name = draw(NAME)
        token = draw(TOKEN)
        if name in NAMES[:-1] and draw(st.booleans()):  # a token that proves the name
            token = tokens.mint(SECRET, name, draw(st.sampled_from([1, 2**33])))
        hello = _cmd("hello", v=2, name=name, token=token, id=draw(CMD_ID))
        lines.append(_encode(hello, draw(st.booleans())))
    lines += draw(st.lists(LINE, max_size=12))
    stream = b"".join(line + draw(TERMINATOR) for line in lines)
    cuts = sorted(draw(st.sets(st.integers(0, len(stream)), max_size=6)) | {0, len(stream)})
    chunks = tuple(stream[a:b] for a, b in itertools.pairwise(cuts) if b > a)
    return Fuzzer(chunks, draw(ENDING))


FUZZERS_STRATEGY = st.lists(fuzzer(), min_size=FUZZERS, max_size=FUZZERS)

# -- the server and its watchers ----------------------------------------------------------


@pytest.fixture
async def fuzz_server(tmp_path: Path) -> AsyncIterator[ChatServer]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        max_line_length=MAX_LINE,
        auth_secret_file=secret,
        require_tokens=False,  # names without tokens too
    )
    srv = await ChatServer.start(config)
    try:
        yield srv
    finally:
        await srv.close()


# -- the fuzzers ---------------------------------------------------------------------------


async def run_fuzzer(
    server: ChatServer, spec: Fuzzer, sent: list[Fuzzer], release: asyncio.Event
) -> None:
    """Send ``spec``'s chunks, mark it sent, and end as it says."""
    loop = asyncio.get_running_loop()
    sock = await raw_socket(server)
    try:
        for chunk in spec.chunks:
            try:
                await loop.sock_sendall(sock, chunk)
            except OSError:  # the server closed it (a line over the limit): fine
                break
            await asyncio.sleep(0)  # let the server read what is there so far
        sent.append(spec)
        if spec.ending == "abort":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif spec.ending == "half_close":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
            await _drain_until_eof(sock)
        elif spec.ending == "linger":
            await release.wait()
    finally:
        sock.close()


async def _drain_until_eof(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                if not await loop.sock_recv(sock, 65536):
                    return
            except OSError:
                return


# -- the healthy pair -----------------------------------------------------------------------


async def healthy_pair(server: ChatServer, n: int) -> tuple[ChatClient, ChatClient]:
    one = await connect("127.0.0.1", server.port, timeout=TIMEOUT)
    two = await connect("127.0.0.1", server.port, timeout=TIMEOUT, v2=True, name=f"pair-{n}")
    assert two.version == 2 and two.user_id == f"pair-{n}"
    for client in (one, two):
        for room in (PRIVATE, SHARED):
            await client.join_and_wait(room, timeout=TIMEOUT)
    return one, two


async def exchange(one: ChatClient, two: ChatClient) -> None:
    """Both send PAIR_MESSAGES messages then an end mark to both rooms; each must see
    exactly those of both, in order, per (room, sender)."""
    pair = (one, two)
    expected: dict[tuple[str, str], list[str]] = {}
    for sender in pair:
        for room in (PRIVATE, SHARED):
            contents = [f"{sender.user_id} {room} {i} ✓" for i in range(PAIR_MESSAGES)] + ["end"]
            expected[(room, sender.user_id)] = contents
    for i in range(PAIR_MESSAGES + 1):
        for sender in pair:
            for room in (PRIVATE, SHARED):
                await sender.send(room, expected[(room, sender.user_id)][i])
    ids = {c.user_id for c in pair}
    for receiver in pair:
        seen: dict[tuple[str, str], list[str]] = {key: [] for key in expected}
        ends = 0
        while ends < len(expected):
            event = await receiver.next_event(timeout=TIMEOUT)
            if isinstance(event, UserMessage) and event.user_id in ids:
                seen[(event.room, event.user_id)].append(event.content)
                ends += event.content == "end"
        assert seen == expected, f"{receiver.user_id} saw {seen}"


# -- the property ---------------------------------------------------------------------------

_counter = iter(range(10**9))


@RUN
@given(fuzzers=FUZZERS_STRATEGY)
async def test_server_survives_hostile_clients(
    fuzz_server: ChatServer, caplog: pytest.LogCaptureFixture, fuzzers: list[Fuzzer]
) -> None:
    server = fuzz_server
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    caplog.set_level(logging.WARNING)
    caplog.clear()
    release = asyncio.Event()
    one, two = await healthy_pair(server, next(_counter))
    try:
        sent: list[Fuzzer] = []
        tasks = [asyncio.ensure_future(run_fuzzer(server, f, sent, release)) for f in fuzzers]
        await until(lambda: len(sent) == len(fuzzers), "the fuzzers sent everything")
        await exchange(one, two)
        release.set()
        await asyncio.gather(*tasks)
        await until(lambda: len(server.connections) == 2, "the server dropped every fuzzer")
        assert not one.closed and not two.closed
        await exchange(one, two)  # and again, with every fuzzer gone
        newcomer = await connect("127.0.0.1", server.port, timeout=TIMEOUT)
        assert newcomer.user_id
        newcomer.close()
        await newcomer.wait_closed()
    finally:
        release.set()
        for client in (one, two):
            client.close()
            await client.wait_closed()
        await until(lambda: not server.connections, "the server dropped the pair")
        loop.set_exception_handler(previous)
    assert not loop_errors, loop_errors
    for record in caplog.records:
        text = record.getMessage()
        assert record.exc_info is None, caplog.text
        assert "Traceback" not in text and "Exception in callback" not in text, caplog.text
        assert record.levelno < logging.ERROR, caplog.text

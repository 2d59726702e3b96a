"""The web front (``--ws``) over real sockets, through the ``websockets`` asyncio client:
WebSocket sessions at /ws (docs/websocket.md) and the web client's static files."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from roomchat.protocol import (
    LoginSuccessful,
    RoomParticipation,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from roomchat.server import ChatServer, ServerConfig, load_rooms
from roomchat.server.shells.net import listen_address
from roomchat.server.shells.ws import CSP, OriginPolicy, WebConnection, frame_events
from tests.helpers import TIMEOUT, client_of, joined, next_event, raw_socket, read_line
from tests.instances import spawn_serve

MAX_LINE = 4096


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, ws="127.0.0.1:0", max_line_length=MAX_LINE)
    )
    try:
        yield srv
    finally:
        await srv.close()


def ws_url(server: ChatServer) -> str:
    assert server.web is not None
    return f"ws://127.0.0.1:{server.web.port}/ws"


async def recv(ws: ClientConnection) -> str:
    data = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(data, str), data
    return data


async def recv_json(ws: ClientConnection) -> dict[str, object]:
    event = json.loads(await recv(ws))
    assert isinstance(event, dict)
    return event


async def ws_login(server: ChatServer) -> tuple[ClientConnection, str]:
    ws = await connect(ws_url(server), open_timeout=TIMEOUT)
    login = await recv_json(ws)
    assert login["_et"] == "login_successful"
    assert isinstance(login["u"], str)
    return ws, login["u"]


async def ws_join(ws: ClientConnection, room: str, user: str) -> list[str]:
    await ws.send(json.dumps({"_ct": "join_room", "r": room}, separators=(",", ":")))
    reply = await recv_json(ws)
    assert reply["_et"] == "user_joined_room" and reply["r"] == room, reply
    assert await recv_json(ws) == {"_et": "room_participation", "r": room, "u": user, "s": "joined"}
    members = reply["us"]
    assert isinstance(members, list)
    return members


async def closed_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


# -- sessions ------------------------------------------------------------------------------
async def test_login_is_the_tcp_bytes_without_crlf(server: ChatServer) -> None:
    async with connect(ws_url(server)) as ws:
        text = await recv(ws)
        login = json.loads(text)
        expected = LoginSuccessful(login["s"], login["u"], load_rooms())
        assert text.encode() + b"\r\n" == encode(expected)
        assert len(login["u"]) == 5 and len(login["s"]) == 21


async def test_join_send_and_events_are_exact_v1_bytes(server: ChatServer) -> None:
    ws, user = await ws_login(server)
    await ws.send('{"_ct":"join_room","r":"general"}')
    assert (await recv(ws)).encode() + b"\r\n" == encode(UserJoinedRoom("general", (user,)))
    assert (await recv(ws)).encode() + b"\r\n" == encode(
        RoomParticipation("general", user, "joined")
    )
    await ws.send('{"_ct":"send_message","r":"general","c":"hello 👋 \\"quoted\\""}')
    text = await recv(ws)
    assert text.encode() + b"\r\n" == encode(UserMessage("general", user, 'hello 👋 "quoted"'))
    assert "\r" not in text and "\n" not in text
    await ws.send('{"_ct":"leave_room","r":"general"}')
    await ws.send('{"_ct":"quit"}')
    assert await closed_code(ws) == 1000


async def test_one_frame_per_event_even_when_a_turn_has_many(server: ChatServer) -> None:
    ws, user = await ws_login(server)
    await ws_join(ws, "general", user)
    for n in range(50):  # sent back to back: the server writes many events per turn
        await ws.send(json.dumps({"_ct": "send_message", "r": "general", "c": f"m{n}"}))
    for n in range(50):
        assert await recv_json(ws) == {
            "_et": "user_message",
            "r": "general",
            "u": user,
            "c": f"m{n}",
        }
    await ws.close()


async def test_browser_and_tcp_users_chat_in_the_same_room(server: ChatServer) -> None:
    ws, ws_user = await ws_login(server)
    async with await client_of(server) as tcp:
        await joined(tcp, "general")
        members = await ws_join(ws, "general", ws_user)
        assert sorted(members) == sorted([tcp.user_id, ws_user])
        assert await next_event(tcp) == RoomParticipation("general", ws_user, "joined")
        await ws.send('{"_ct":"send_message","r":"general","c":"from the browser"}')
        assert await next_event(tcp) == UserMessage("general", ws_user, "from the browser")
        await tcp.send("general", "from the terminal")
        assert await next_event(tcp) == UserMessage("general", tcp.user_id, "from the terminal")
        assert await recv_json(ws) == {
            "_et": "user_message",
            "r": "general",
            "u": ws_user,
            "c": "from the browser",
        }
        assert await recv_json(ws) == {
            "_et": "user_message",
            "r": "general",
            "u": tcp.user_id,
            "c": "from the terminal",
        }
        await ws.close()  # a close frame ends the session as quit does: the room sees "left"
        assert await next_event(tcp) == RoomParticipation("general", ws_user, "left")


# -- bad input -------------------------------------------------------------------------------
async def test_binary_frame_closes_with_1003(server: ChatServer) -> None:
    ws, user = await ws_login(server)
    async with await client_of(server) as tcp:
        await joined(tcp, "general")
        await ws_join(ws, "general", user)
        assert await next_event(tcp) == RoomParticipation("general", user, "joined")
        await ws.send(b'{"_ct":"send_message","r":"general","c":"binary"}')
        assert await closed_code(ws) == 1003
        assert await next_event(tcp) == RoomParticipation("general", user, "left")


async def test_oversized_frame_closes_with_1009(server: ChatServer) -> None:
    ws, _ = await ws_login(server)
    content = "x" * MAX_LINE
    await ws.send(json.dumps({"_ct": "send_message", "r": "general", "c": content}))
    assert await closed_code(ws) == 1009


async def test_frame_of_exactly_the_limit_is_accepted(server: ChatServer) -> None:
    ws, user = await ws_login(server)
    await ws_join(ws, "general", user)
    head = '{"_ct":"send_message","r":"general","c":"'
    content = "y" * (MAX_LINE - len(head) - 2)
    frame = head + content + '"}'
    assert len(frame) == MAX_LINE
    await ws.send(frame)
    assert (await recv_json(ws))["c"] == content
    await ws.close()


async def test_fragmented_message_is_one_command(server: ChatServer) -> None:
    ws, user = await ws_login(server)
    await ws_join(ws, "general", user)
    await ws.send(['{"_ct":"send_message",', '"r":"general",', '"c":"in pieces"}'])
    assert (await recv_json(ws))["c"] == "in pieces"
    await ws.close()


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "{}",
        '{"_ct":"fly"}',
        '{"_ct":"send_message","r":"general"}',
        '{"_ct":"join_room","r":"no-such-room"}',
        '{"_ct":"send_message","r":"random","c":"not joined"}',
        # One frame is one command: a newline inside makes it a bad command, even when
        # each line would be valid on its own.
        '{"_ct":"join_room","r":"random"}\n{"_ct":"join_room","r":"help"}',
        '{"_ct":"join_room","r":"random"}\r\n',
        "",
    ],
)
async def test_bad_commands_are_ignored_and_the_session_stays(server: ChatServer, bad: str) -> None:
    ws, user = await ws_login(server)
    await ws.send(bad)
    await ws.send('{"_ct":"join_room","r":"general"}')
    reply = await recv_json(ws)  # the first event after the bad frame is the join's
    assert reply == {"_et": "user_joined_room", "r": "general", "us": [user]}
    await ws.close()


async def test_slow_consumer_is_cut_off() -> None:
    limit = 64 * 1024
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, ws="127.0.0.1:0", max_pending_output=limit)
    )
    try:
        assert srv.web is not None
        sender = await client_of(srv)
        await joined(sender, "general")
        # A WebSocket client that joins, then never reads (a small receive buffer keeps
        # the kernel's share small).
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(slow, ("127.0.0.1", srv.web.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            slow,
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{srv.web.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            + _masked_text(b'{"_ct":"join_room","r":"general"}'),
        )
        event = await next_event(sender)
        assert isinstance(event, RoomParticipation) and event.status == "joined"
        slow_user = event.user_id
        payload = "z" * 1000
        sent = 0
        received = 0
        while True:
            assert sent < 100_000, "slow consumer was never cut off"
            for _ in range(100):
                await sender.send("general", f"{sent}:{payload}")
                sent += 1
            left = False
            while received < sent and not left:
                event = await next_event(sender)
                if isinstance(event, RoomParticipation):
                    assert event == RoomParticipation("general", slow_user, "left")
                    left = True
                else:
                    assert isinstance(event, UserMessage)
                    assert event.content == f"{received}:{payload}"
                    received += 1
            if left:
                break
        assert all(c.session is None or c.session.user_id != slow_user for c in srv.connections)
        slow.close()
        sender.close()
    finally:
        await srv.close()


def _masked_text(payload: bytes) -> bytes:
    """A client's text frame (clients must mask), payload < 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + masked


# -- the upgrade ---------------------------------------------------------------------------
async def test_other_origin_is_refused_with_403(
    server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(ws_url(server), origin="http://evil.example")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    assert "origin 'http://evil.example' not allowed" in caplog.text


async def test_same_origin_is_allowed(server: ChatServer) -> None:
    assert server.web is not None
    origin = f"http://127.0.0.1:{server.web.port}"
    async with connect(ws_url(server), origin=origin) as ws:  # type: ignore[arg-type]
        assert (await recv_json(ws))["_et"] == "login_successful"


async def test_origin_allow_list() -> None:
    srv = await ChatServer.start(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            ws="127.0.0.1:0",
            ws_origins=("https://chat.example.org",),
        )
    )
    try:
        url = ws_url(srv)
        async with connect(url, origin="https://chat.example.org") as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["_et"] == "login_successful"
        with pytest.raises(InvalidStatus) as info:
            await connect(url, origin=f"http://127.0.0.1:{srv.web.port}")  # type: ignore[arg-type,union-attr]
        assert info.value.response.status_code == 403
    finally:
        await srv.close()


def test_origin_policy() -> None:
    same = OriginPolicy()
    assert same.allows(None, "a:1")  # not a browser
    assert same.allows("http://a:1", "a:1")
    assert same.allows("https://A:1/", "a:1")
    assert not same.allows("http://b:1", "a:1")
    assert not same.allows("null", "a:1")
    assert not same.allows("http://a:1", None)
    assert OriginPolicy(["*"]).allows("http://b:1", "a:1")
    listed = OriginPolicy(["http://b:1", "https://c"])
    assert listed.allows("http://b:1", "a:1")
    assert listed.allows("https://c", "a:1")
    assert not listed.allows("http://a:1", "a:1")


async def test_server_shutdown_closes_with_1001() -> None:
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, ws="127.0.0.1:0"))
    ws, _ = await ws_login(srv)
    closing = asyncio.create_task(srv.close())
    assert await closed_code(ws) == 1001
    await closing
    assert srv.web is not None and not srv.connections


async def test_v2_over_websocket_hello_history_and_shutdown_notice() -> None:
    """v2 is the same over /ws: hello -> welcome with the name, join with history, and
    the shutdown notice comes before the 1001 close (what the web client relies on)."""
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, ws="127.0.0.1:0"))
    try:
        ws, _ = await ws_login(srv)
        await ws.send('{"_ct":"hello","v":2,"name":"ann"}')
        welcome = await recv_json(ws)
        assert welcome["_et"] == "welcome" and welcome["u"] == "ann", welcome
        assert (await recv_json(ws))["_et"] == "rooms"
        await ws.send('{"_ct":"join_room","r":"general","h":50}')
        assert (await recv_json(ws))["_et"] == "user_joined_room"
        history = await recv_json(ws)
        assert isinstance(history.get("e"), str) and history["e"], history
        assert history == {
            "_et": "history",
            "r": "general",
            "ms": [],
            "q": 0,
            "gap": False,
            "e": history["e"],
        }
        taken, _ = await ws_login(srv)
        await taken.send('{"_ct":"hello","v":2,"name":"ANN"}')
        refused = await recv_json(taken)
        assert refused["_et"] == "error" and refused["code"] == "name_taken", refused
        closing = asyncio.create_task(srv.close())
        seen = [await recv_json(ws) for _ in range(2)]  # joined, then the notice
        assert seen[-1]["_et"] == "shutdown", seen
        assert await closed_code(ws) == 1001
        await closing
    finally:
        await srv.close()


async def test_busy_ws_port_is_a_start_error() -> None:
    from roomchat.server import ServerStartError

    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, ws="127.0.0.1:0"))
    try:
        assert srv.web is not None
        with pytest.raises(ServerStartError, match="web client"):
            await ChatServer.start(
                ServerConfig(host="127.0.0.1", port=0, ws=f"127.0.0.1:{srv.web.port}")
            )
    finally:
        await srv.close()


# -- HTTP ------------------------------------------------------------------------------------
async def http(server: ChatServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    assert server.web is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.web.port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/index.html", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/app.js", "text/javascript; charset=utf-8", b"RoomchatClient"),
        ("/client.js", "text/javascript; charset=utf-8", b"export class RoomchatClient"),
        ("/app.css", "text/css; charset=utf-8", b":root"),
        ("/favicon.svg", "image/svg+xml", b"<svg"),
        ("/?autoconnect", "text/html; charset=utf-8", b"<!doctype html>"),
    ],
)
async def test_static_files_with_csp(
    server: ChatServer, path: str, content_type: str, marker: bytes
) -> None:
    status, headers, body = await http(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 200
    assert headers["content-type"] == content_type
    assert headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP and "connect-src 'self' ws: wss:" in CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert int(headers["content-length"]) == len(body)
    assert marker in body


async def test_head_has_headers_and_no_body(server: ChatServer) -> None:
    status, headers, body = await http(server, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 1000


@pytest.mark.parametrize("path", ["/nope", "/../pyproject.toml", "/web/app.js", "/__init__.py"])
async def test_unknown_path_is_404(server: ChatServer, path: str) -> None:
    status, headers, _ = await http(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 404
    assert headers["content-security-policy"] == CSP


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_only_get_and_head(server: ChatServer, method: str) -> None:
    status, headers, _ = await http(server, f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


async def test_plain_get_of_ws_is_refused_and_garbage_is_dropped(server: ChatServer) -> None:
    status, _, _ = await http(server, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status in (400, 426)
    assert server.web is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.web.port)
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()


async def test_tcp_still_works_beside_the_web_port(server: ChatServer) -> None:
    sock = await raw_socket(server)
    assert json.loads(await read_line(sock, bytearray()))["_et"] == "login_successful"
    sock.close()


# -- units ---------------------------------------------------------------------------------
def test_frame_events_sizes() -> None:
    for size in (0, 1, 125, 126, 65535, 65536, 70000):
        line = b"a" * size
        framed = frame_events(line + b"\r\n" + b"{}\r\n")
        if size < 126:
            header = bytes((0x81, size))
        elif size < 65536:
            header = bytes((0x81, 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x81, 127)) + size.to_bytes(8, "big")
        assert framed == header + line + b"\x81\x02{}"


def test_listen_address() -> None:
    assert listen_address("127.0.0.1:8081") == ("127.0.0.1", 8081)
    assert listen_address(":8081") == ("0.0.0.0", 8081)
    assert listen_address("[::1]:0") == ("::1", 0)
    for bad in ("8081", "host:", "host:http", "h:70000"):
        with pytest.raises(ValueError):
            listen_address(bad)


# -- the input fast path and websockets' parser share one stream ------------------------------
def _client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame of any opcode and size."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + mask + masked


async def _read_frames(
    sock: socket.socket, buffer: bytearray, count: int
) -> list[tuple[int, bytes]]:
    """``count`` server frames (opcode, payload) from a raw socket."""
    loop = asyncio.get_running_loop()
    frames: list[tuple[int, bytes]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(frames) < count:
            while True:
                if len(buffer) >= 2:
                    length, head = buffer[1] & 0x7F, 2
                    if length == 126 and len(buffer) >= 4:
                        length, head = int.from_bytes(buffer[2:4], "big"), 4
                    elif length == 127 and len(buffer) >= 10:
                        length, head = int.from_bytes(buffer[2:10], "big"), 10
                    if (length < 126 or head > 2) and len(buffer) >= head + length:
                        break
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, "connection closed"
                buffer += chunk
            frames.append((buffer[0] & 0x0F, bytes(buffer[head : head + length])))
            del buffer[: head + length]
    return frames


@pytest.mark.parametrize("fast_input", [True, False])
async def test_frames_split_and_mixed_with_control_frames_and_fragments(
    server: ChatServer, fast_input: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path for plain text frames hands everything else, and every partial
    frame, to websockets' parser: the stream reads the same either way."""
    monkeypatch.setattr(WebConnection, "FAST_INPUT", fast_input)
    assert server.web is not None
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.web.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    buffer = bytearray()
    async with asyncio.timeout(TIMEOUT):
        while b"\r\n\r\n" not in buffer:
            buffer += await loop.sock_recv(sock, 65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    buffer[:] = rest
    [(opcode, login)] = await _read_frames(sock, buffer, 1)
    assert opcode == 1 and json.loads(login)["_et"] == "login_successful"

    def send(content: str) -> bytes:
        command = {"_ct": "send_message", "r": "general", "c": content}
        return _client_frame(1, json.dumps(command).encode())

    big = "B" * 300  # a 16-bit length
    stream = b"".join(
        [
            _client_frame(1, b'{"_ct":"join_room","r":"general"}'),
            _client_frame(9, b"ping!"),  # a ping between text frames
            send("a"),
            _client_frame(1, b'{"_ct":"send_message",', fin=False),  # a fragmented message
            _client_frame(0, b'"r":"general","c":"b"}'),
            send(big),
            send("c"),
            send("d"),
            send("e"),
        ]
    )
    # Cut the stream at awkward places: inside headers, masks and payloads.
    cuts = [1, 7, 40, 41, 90, 150, 151, 400, len(stream) - 3]
    start = 0
    for cut in [*cuts, len(stream)]:
        await loop.sock_sendall(sock, stream[start:cut])
        start = cut
        await asyncio.sleep(0.01)
    frames = await _read_frames(sock, buffer, 9)
    assert (10, b"ping!") in frames  # the pong
    events = [json.loads(payload) for opcode, payload in frames if opcode == 1]
    assert [e["_et"] for e in events[:2]] == ["user_joined_room", "room_participation"]
    assert [e["c"] for e in events[2:]] == ["a", "b", big, "c", "d", "e"]
    sock.close()


# -- roomchat serve --ws ---------------------------------------------------------------------
_serve = spawn_serve


async def test_serve_logs_the_url_to_open() -> None:
    process = await _serve("--ws", "127.0.0.1:0")
    assert process.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            while b"web client on " not in (line := await process.stderr.readline()):
                assert line, "no web client line"
        match = re.search(rb"web client on (http://127\.0\.0\.1:\d+/)", line)
        assert match is not None, line
        async with asyncio.timeout(TIMEOUT):  # then the start-up line: signals handled
            while b"roomchat listening" not in await process.stderr.readline():
                pass
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999"])
async def test_serve_with_a_bad_ws_address_is_one_line_and_nonzero(address: str) -> None:
    process = await _serve("--ws", address)
    _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode != 0
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--ws" in lines[0], lines

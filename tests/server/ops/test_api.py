"""The operator API through HTTP (docs/api.md): keys, every endpoint with what the chat
sessions see of it, and the defined answers to bad requests (400, 401, 403, 404, 409,
413). Real server, real sockets, aiohttp's client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from roomchat.server import ChatServer, ServerConfig
from roomchat.server.app import ServerStartError
from tests.helpers import wait_eof
from tests.server.test_community import SECRET, Peer, peer

KEY = "k" * 32
READ_ONLY = "r" * 32
PACKAGED = Path("src/roomchat/server/ops/openapi.json")


@pytest.fixture
async def server(bus_url: str, tmp_path: Path) -> AsyncIterator[ChatServer]:
    keys = tmp_path / "keys"
    keys.write_text(f"# operators\n{KEY}\nread-only {READ_ONLY}\n")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    srv = await ChatServer.start(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            bus_url=bus_url,
            metrics=("127.0.0.1", 0),
            api_key_file=keys,
            auth_secret_file=secret,
            require_tokens=False,
        )
    )
    try:
        yield srv
    finally:
        await srv.close()


class Api:
    def __init__(self, server: ChatServer, session: aiohttp.ClientSession) -> None:
        assert server.metrics is not None
        self.base = f"http://127.0.0.1:{server.metrics.port}/api/v1"
        self.session = session

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = KEY, raw: bytes = b""
    ) -> tuple[int, Any]:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        data = raw or (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(
            method, self.base + path, data=data, headers=headers
        ) as response:
            text = await response.text()
            assert response.content_type == "application/json", text
            return response.status, json.loads(text)


@pytest.fixture
async def api(server: ChatServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(server, session)


async def test_keys(api: Api) -> None:
    status, body = await api.call("GET", "/rooms", key=None)
    assert (status, body["error"]) == (401, "unauthorised")
    status, _ = await api.call("GET", "/rooms", key="x" * 32)
    assert status == 401
    status, _ = await api.call("GET", "/rooms", key=READ_ONLY)
    assert status == 200
    status, body = await api.call("POST", "/rooms", {"name": "x"}, key=READ_ONLY)
    assert (status, body["error"]) == (403, "read_only")


async def test_the_description_is_served_kept_in_docs_and_covers_every_route(
    server: ChatServer, api: Api
) -> None:
    status, spec = await api.call("GET", "/openapi.json", key=None)
    assert status == 200
    assert (
        spec
        == json.loads(PACKAGED.read_text())
        == json.loads(Path("docs/openapi.json").read_text())
    )
    assert server.metrics is not None
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in server.metrics.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"  # aiohttp adds one per GET
    }
    described = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert routes == described


async def test_rooms_created_listed_and_refused(server: ChatServer, api: Api) -> None:
    alice = await peer(server, "alice")
    status, room = await api.call("POST", "/rooms", {"name": "news", "description": "d"})
    assert status == 201 and room["name"] == "news" and room["private"] is False
    assert (await alice.next("room_added"))["rm"] == {"n": "news", "d": "d"}
    await alice.join("news")
    status, body = await api.call("GET", "/rooms")
    rooms = {r["name"]: r for r in body["rooms"]}
    assert rooms["news"]["members"] == 1 and rooms["news"]["local_sessions"] == 1
    assert set(rooms) == {d.name for d in server.rooms.details}
    assert (await api.call("POST", "/rooms", {"name": "NEWS"}))[0] == 409
    status, body = await api.call("POST", "/rooms", {"name": "bad name"})
    assert (status, body["error"]) == (400, "room_invalid")
    status, body = await api.call("POST", "/rooms", raw=b"{not json")
    assert (status, body["error"]) == (400, "bad_command")
    status, body = await api.call("POST", "/rooms", {"name": 5})
    assert status == 400 and "string" in body["message"]
    status, body = await api.call("POST", "/rooms", raw=b'{"name":"' + b"x" * 70_000 + b'"}')
    assert (status, body["error"]) == (413, "too_large")
    status, body = await api.call("GET", "/rooms/nowhere/members")
    assert status == 404
    status, body = await api.call("GET", "/nothing")
    assert (status, body["error"]) == (404, "not_found")


async def test_post_a_message(server: ChatServer, api: Api) -> None:
    alice = await peer(server, "alice")
    await alice.join("general")
    status, body = await api.call(
        "POST", "/rooms/general/messages", {"content": "maintenance at 5"}
    )
    assert status == 201 and body["user"] == "@server"
    message = await alice.next("user_message")
    assert (message["u"], message["c"]) == ("@server", "maintenance at 5")
    assert message["q"] >= 1
    assert (await api.call("POST", "/rooms/general/messages", {}))[0] == 400
    assert (await api.call("POST", "/rooms/nowhere/messages", {"content": "x"}))[0] == 404


async def test_ban_kick_mute_archive_and_the_audit_log(server: ChatServer, api: Api) -> None:
    alice, bob = await peer(server, "alice"), await peer(server, "bob")
    for conn in (alice, bob):
        await conn.join("general")
    status, body = await api.call("POST", "/rooms/general/bans", {"user": "bob", "seconds": 600})
    assert status == 201 and body["what"] == "ban" and body["until"] > 0
    assert (await bob.next("moderation", what="ban"))["by"] == "api"
    await alice.next("room_participation", s="left", u="bob")
    await bob.send(_ct="join_room", r="general")
    await bob.error("banned")
    assert (await api.call("DELETE", "/rooms/general/bans/bob"))[0] == 200
    await bob.next("moderation", what="unban")
    await bob.join("general")
    assert (await api.call("POST", "/rooms/general/kicks", {"user": "bob", "why": "x"}))[0] == 201
    await alice.next("room_participation", s="left", u="bob")
    assert (await api.call("POST", "/rooms/general/mutes", {"user": "alice"}))[0] == 201
    await alice.next("moderation", what="mute")
    await alice.say("general", "hm")
    await alice.error("muted")
    assert (await api.call("DELETE", "/rooms/general/mutes/alice"))[0] == 200
    status, body = await api.call("GET", "/rooms/general/audit?limit=10")
    assert status == 200
    assert [(e["by"], e["what"], e.get("user")) for e in body["entries"]] == [
        ("api", "ban", "bob"),
        ("api", "unban", "bob"),
        ("api", "kick", "bob"),
        ("api", "mute", "alice"),
        ("api", "unmute", "alice"),
    ]
    assert (await api.call("GET", "/rooms/general/audit?limit=x"))[0] == 400
    status, _ = await api.call("POST", "/rooms/general/bans", {"user": "no such user"})
    assert status == 400
    status, body = await api.call("POST", "/rooms/general/archive", {"why": "moved"})
    assert status == 201
    assert (await alice.next("room_removed"))["why"] == "moved"
    assert (await api.call("POST", "/rooms/general/archive", {}))[0] == 409
    status, body = await api.call("GET", "/rooms/general")
    assert body["archived"] is True


async def test_sessions_and_disconnect(server: ChatServer, api: Api) -> None:
    first = await peer(server, "alice", proven=True)
    second = await peer(server, "alice", proven=True)
    await first.join("general")
    status, body = await api.call("GET", "/users/Alice/sessions")
    assert status == 200 and body["user"] == "alice"
    assert sorted(s["rooms"] for s in body["sessions"]) == [[], ["general"]]
    status, body = await api.call("DELETE", "/users/alice/sessions", {"why": "bye"})
    assert status == 200
    for conn in (first, second):
        error = await conn.error("not_authorised")
        assert error["msg"] == "bye"
        await wait_eof(conn.sock)
    assert (await api.call("GET", "/users/bad%20name/sessions"))[0] == 400


async def test_server_wide_ban(server: ChatServer, api: Api) -> None:
    bob: Peer = await peer(server, "bob")
    assert (await api.call("POST", "/bans", {"user": "bob", "why": "spam"}))[0] == 201
    await bob.error("banned")
    await wait_eof(bob.sock)
    assert (await api.call("DELETE", "/bans/bob"))[0] == 200


async def test_key_file_problems_stop_the_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    short = tmp_path / "short"
    short.write_text("abc\n")
    for path, needle in ((empty, "no key"), (short, "16"), (tmp_path / "none", "cannot read")):
        with pytest.raises(ServerStartError, match=needle):
            await ChatServer.start(
                ServerConfig(host="127.0.0.1", port=0, metrics=("127.0.0.1", 0), api_key_file=path)
            )
    with pytest.raises(ServerStartError, match="--metrics"):
        await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, api_key_file=short))


async def test_history_pages_retention_and_purge(server: ChatServer, api: Api) -> None:
    """The stored history through the API: a page, the room's retention read and set,
    and an admin's purge, after which a new member's join history is empty too (on
    every instance's bus) and the numbering goes on."""
    alice = await peer(server, "alice")
    await alice.join("general")
    for n in range(5):
        await alice.say("general", f"m{n}")
    for n in range(5):
        assert (await alice.next("user_message"))["c"] == f"m{n}"
    await alice.send(_ct="delete_message", r="general", q=2, id="d")
    await alice.next("message_deleted", q=2)
    await alice.send(_ct="edit_message", r="general", q=3, c="m2'", id="e")
    await alice.next("message_edited", q=3)
    await alice.drain()

    status, page = await api.call("GET", "/rooms/general/history?limit=3", key=READ_ONLY)
    assert status == 200, page
    assert page["room"] == "general" and page["seq"] == 5 and page["epoch"]
    assert [(m["seq"], m["content"], m["deleted"]) for m in page["messages"]] == [
        (3, "m2'", False),
        (4, "m3", False),
        (5, "m4", False),
    ]
    assert "edited" in page["messages"][0] and "edited" not in page["messages"][1]
    status, page = await api.call("GET", "/rooms/general/history?before=3")
    assert [(m["seq"], m["content"], m["deleted"]) for m in page["messages"]] == [
        (1, "m0", False),
        (2, None, True),
    ]
    status, page = await api.call("GET", "/rooms/general/history?after=4")
    assert [m["seq"] for m in page["messages"]] == [5]
    for bad in ("limit=0", "limit=201", "before=x", "after=-1", "before=3&after=1"):
        status, body = await api.call("GET", f"/rooms/general/history?{bad}")
        assert (status, body["error"]) == (400, "bad_command"), bad
    assert (await api.call("GET", "/rooms/nowhere/history"))[0] == 404

    status, kept = await api.call("GET", "/rooms/general/retention")
    assert status == 200 and kept == {"room": "general", "messages": 100_000, "days": 0}
    status, kept = await api.call("PUT", "/rooms/general/retention", {"messages": 10, "days": 7})
    assert status == 200 and kept == {"room": "general", "messages": 10, "days": 7}
    status, kept = await api.call("PUT", "/rooms/general/retention", {"days": 0})
    assert kept == {"room": "general", "messages": 100_000, "days": 0}  # back to the server's
    for bad in ({"messages": -1}, {"days": "7"}, {"messages": True}):
        status, body = await api.call("PUT", "/rooms/general/retention", bad)
        assert (status, body["error"]) == (400, "bad_command"), bad
    status, body = await api.call("PUT", "/rooms/general/retention", {"days": 1}, key=READ_ONLY)
    assert status == 403

    status, body = await api.call("DELETE", "/rooms/general/history", key=READ_ONLY)
    assert status == 403
    status, body = await api.call("DELETE", "/rooms/general/history")
    assert status == 200 and body == {"room": "general", "purged": 5}
    status, page = await api.call("GET", "/rooms/general/history")
    assert page["messages"] == [] and page["seq"] == 5
    bob = await peer(server, "bob")
    await bob.send(_ct="join_room", r="general", h=50)
    history = await bob.next("history", r="general")
    assert history["ms"] == [] and history["q"] == 5
    await alice.say("general", "after")
    assert (await bob.next("user_message"))["q"] == 6
    for conn in (alice, bob):
        conn.close()

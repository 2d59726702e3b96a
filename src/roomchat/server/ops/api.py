"""The operator API: HTTP and JSON under ``/api/v1/`` on the operator listener
(docs/api.md; the OpenAPI description is ``openapi.json`` beside this module).

Every request carries ``Authorization: Bearer KEY``; the keys come from
``--api-key-file`` (one per line; ``read-only KEY`` for a key that may only read,
``#`` comments). A missing or wrong key gets 401, a read-only key on a change 403.
Requests go to the community service (core/community.py) as an API actor, which may do
anything and is named ``api`` in the audit log; what they change reaches every instance
as any moderator's change does. Answers are JSON; so are errors: ``{"error": CODE,
"message": TEXT}`` with 400 (bad JSON or fields), 404 (unknown room), 409 (the room
exists, or is archived), 413 (body over 64 KiB), 503 (the message store cannot answer).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from roomchat.protocol import PAGE_MAX, AuditEntry, dm_users, name_key, valid_name
from roomchat.server.core.community import API_SENDER, Community
from roomchat.server.core.errors import BadCommand, Refused, Unavailable, UnknownRoom
from roomchat.server.core.history import StoredMessage
from roomchat.server.core.keeping import Keeper
from roomchat.server.core.policy import Action, Actor, Outcome, RoomInfo
from roomchat.server.store import Archive, StoreError

__all__ = ["ApiKeys", "KeyFileError", "api_routes", "load_keys"]

#: The actor of every API request (as the audit log names it).
API_ACTOR = Actor("api", api=True)
#: HTTP status per refusal code.
_STATUS = {
    "unknown_room": 404,
    "room_exists": 409,
    "archived": 409,
    "not_authorised": 403,
    "banned": 403,
    "unavailable": 503,
}
_JSON = "application/json"
_JSON_TYPES = {str: "string", int: "integer", bool: "boolean"}
_SPEC = resources.files("roomchat.server.ops").joinpath("openapi.json")


class KeyFileError(Exception):
    """The --api-key-file cannot be read, or holds no key."""


@dataclass(frozen=True)
class ApiKeys:
    full: tuple[bytes, ...]
    read_only: tuple[bytes, ...] = ()


def load_keys(path: Path) -> ApiKeys:
    """Keys, one per line: ``KEY`` or ``read-only KEY``; blank lines and ``#`` comments
    are skipped. Keys shorter than 16 characters are refused (they are guessable)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file {str(path)!r}: {exc}") from None
    full: list[bytes] = []
    read_only: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) == 2 and words[0] == "read-only":
            target, key = read_only, words[1]
        elif len(words) == 1:
            target, key = full, words[0]
        else:
            raise KeyFileError(f"{path}:{number}: expected KEY or 'read-only KEY'")
        if len(key) < 16:
            raise KeyFileError(f"{path}:{number}: a key needs at least 16 characters")
        target.append(key.encode())
    if not full and not read_only:
        raise KeyFileError(f"the API key file {str(path)!r} holds no key")
    return ApiKeys(tuple(full), tuple(read_only))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _refused(refused: Refused) -> web.Response:
    return _error(_STATUS.get(refused.code, 400), refused.code, refused.msg)


def _matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    # Every key is compared (no early exit), each in constant time.
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


def _guard(keys: ApiKeys) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        if request.path == "/api/v1/openapi.json":
            return await handler(request)  # the description is public
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        secret = given.strip().encode()
        challenge = {"WWW-Authenticate": 'Bearer realm="roomchat"'}
        if scheme.lower() != "bearer" or not secret:
            response = _error(401, "unauthorised", "send Authorization: Bearer KEY")
            response.headers.update(challenge)
            return response
        if _matches(secret, keys.full):
            pass
        elif _matches(secret, keys.read_only):
            if request.method not in ("GET", "HEAD"):
                return _error(403, "read_only", "this key may only read")
        else:
            response = _error(401, "unauthorised", "the key is not valid")
            response.headers.update(challenge)
            return response
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", "the body passed 64 KiB")
        except web.HTTPNotFound:
            return _error(404, "not_found", f"no such API path: {request.path}")
        except web.HTTPMethodNotAllowed as exc:
            response = _error(405, "method_not_allowed", f"{request.method} is not allowed here")
            response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
            return response

    return guard


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; BadCommand (400) otherwise."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise BadCommand("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadCommand("the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadCommand(f"{name!r} is required")
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadCommand(f"{name!r} must be an integer")
    if not isinstance(value, kind):
        raise BadCommand(f"{name!r} must be a {_JSON_TYPES[kind]}")
    if isinstance(value, int) and value < 0:
        raise BadCommand(f"{name!r} must not be negative")
    return value


async def _room_json(info: RoomInfo, community: Community) -> dict[str, Any]:
    chat = community.directory.rooms[info.name]
    users = await _ask(lambda done: community.users(info.name, done))
    assert isinstance(users, list)
    return {
        "name": info.name,
        "description": info.description,
        "private": info.private,
        "archived": info.archived,
        "created_by": info.created_by,
        "members": len(users),
        "local_sessions": chat.member_count,
    }


def _message_json(message: StoredMessage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": message.seq,
        "ts": message.ts,
        "user": message.user,
        "content": message.content,
        "deleted": message.content is None,
    }
    if message.edited is not None:
        out["edited"] = message.edited
    return out


def _query_int(request: web.Request, name: str, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadCommand(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadCommand(f"{name} is {low} to {high}")
    return value


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    action = outcome.action
    out: dict[str, Any] = {"room": action.room, "what": action.what, "user": action.user}
    if outcome.until is not None:
        out["until"] = outcome.until
    if action.why is not None:
        out["why"] = action.why
    return out


def _entry_json(entry: AuditEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": entry.timestamp, "by": entry.by, "what": entry.what}
    for key in ("user", "until", "role", "seconds", "why"):
        value = getattr(entry, key)
        if value is not None:
            out[key] = value
    return out


async def _ask(request: Callable[[Callable[[object], None]], None]) -> object:
    """A community request, awaited: its result, or the Refused raised."""
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def done(result: object) -> None:
        if not future.done():
            future.set_result(result)

    request(done)
    result = await future
    if isinstance(result, Refused):
        raise result
    return result


def api_routes(
    community: Community, keys: ApiKeys, keeper: Keeper, kept: Archive
) -> tuple[list[web.RouteDef], Any]:
    """The API's routes and the middleware that checks their keys."""

    def room_of(request: web.Request) -> RoomInfo:
        name = request.match_info["room"]
        info = community.directory.find(name)
        if info is None or info.dm is not None:
            raise UnknownRoom(f"no room named {name!r}")
        return info

    def user_of(request: web.Request) -> str:
        user = request.match_info["user"]
        if not valid_name(user):
            raise BadCommand(f"{user!r} is not a user name")
        return user

    def refusals(
        handler: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except Refused as refused:
                return _refused(refused)

        return wrapped

    async def moderate(
        request: web.Request, what: str, room: str | None, user: str | None, **fields: Any
    ) -> web.Response:
        action = Action(what, room, API_ACTOR, user, **fields)  # type: ignore[arg-type]
        outcome = await _ask(lambda done: community.moderate(action, done))
        assert isinstance(outcome, Outcome)
        return web.json_response(
            _outcome_json(outcome), status=200 if what.startswith("un") else 201
        )

    @refusals
    async def list_rooms(request: web.Request) -> web.Response:
        listed = [info for info in community.directory.infos.values() if info.dm is None]
        rooms = await asyncio.gather(*(_room_json(info, community) for info in listed))
        return web.json_response({"rooms": rooms})

    @refusals
    async def create_room(request: web.Request) -> web.Response:
        body = await _body(request)
        name = _field(body, "name", str)
        description = _field(body, "description", str, required=False) or ""
        private = _field(body, "private", bool, required=False) or False
        result = await _ask(
            lambda done: community.create_room(API_ACTOR, name, description, private, done)
        )
        assert isinstance(result, RoomInfo)
        return web.json_response(await _room_json(result, community), status=201)

    @refusals
    async def get_room(request: web.Request) -> web.Response:
        return web.json_response(await _room_json(room_of(request), community))

    @refusals
    async def members(request: web.Request) -> web.Response:
        info = room_of(request)
        users = await _ask(lambda done: community.users(info.name, done))
        return web.json_response({"room": info.name, "users": users})

    @refusals
    async def post_message(request: web.Request) -> web.Response:
        info = room_of(request)
        body = await _body(request)
        content = _field(body, "content", str)
        community.post(info.name, content)
        return web.json_response(
            {"room": info.name, "user": API_SENDER, "content": content}, status=201
        )

    async def timed(request: web.Request, what: str, room: str | None) -> web.Response:
        """A ban or a mute: ``{"user", "seconds"?, "why"?}``."""
        body = await _body(request)
        return await moderate(
            request,
            what,
            room,
            _field(body, "user", str),
            seconds=_field(body, "seconds", int, required=False),
            why=_field(body, "why", str, required=False),
        )

    @refusals
    async def ban(request: web.Request) -> web.Response:
        return await timed(request, "ban", room_of(request).name)

    @refusals
    async def unban(request: web.Request) -> web.Response:
        return await moderate(request, "unban", room_of(request).name, user_of(request))

    @refusals
    async def kick(request: web.Request) -> web.Response:
        info = room_of(request)
        body = await _body(request)
        why = _field(body, "why", str, required=False)
        return await moderate(request, "kick", info.name, _field(body, "user", str), why=why)

    @refusals
    async def mute(request: web.Request) -> web.Response:
        return await timed(request, "mute", room_of(request).name)

    @refusals
    async def unmute(request: web.Request) -> web.Response:
        return await moderate(request, "unmute", room_of(request).name, user_of(request))

    @refusals
    async def archive(request: web.Request) -> web.Response:
        info = room_of(request)
        body = await _body(request) if request.can_read_body else {}
        why = _field(body, "why", str, required=False)
        return await moderate(request, "archive", info.name, None, why=why)

    @refusals
    async def audit(request: web.Request) -> web.Response:
        info = room_of(request)
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise BadCommand("limit must be an integer") from None
        if not 0 <= limit <= 1000:
            raise BadCommand("limit is 0 to 1000")
        entries = await _ask(lambda done: community.audit(API_ACTOR, info.name, limit, done))
        assert isinstance(entries, list)
        return web.json_response({"room": info.name, "entries": [_entry_json(e) for e in entries]})

    @refusals
    async def server_ban(request: web.Request) -> web.Response:
        return await timed(request, "ban", None)

    @refusals
    async def server_unban(request: web.Request) -> web.Response:
        return await moderate(request, "unban", None, user_of(request))

    @refusals
    async def sessions(request: web.Request) -> web.Response:
        user = user_of(request)
        out = [
            {
                "session": occupant.session_id,
                "user": occupant.user_id,
                "version": 2 if occupant.v2 else 1,
                "rooms": [
                    room
                    for room in community.directory.rooms
                    if occupant.in_room(room) and dm_users(room) is None
                ],
            }
            for occupant in community.of(user)
        ]
        return web.json_response({"user": name_key(user), "sessions": out})

    @refusals
    async def disconnect(request: web.Request) -> web.Response:
        user = user_of(request)
        body = await _body(request) if request.can_read_body else {}
        why = _field(body, "why", str, required=False) or "disconnected by the operator"
        community.disconnect(user, why)
        return web.json_response({"user": name_key(user), "disconnected": True})

    @refusals
    async def history(request: web.Request) -> web.Response:
        """A page of the room's stored history: ``?before=Q`` / ``?after=Q``, ``limit``."""
        info = room_of(request)
        before = _query_int(request, "before", 1, 2**63 - 1)
        after = _query_int(request, "after", 0, 2**63 - 1)
        if before is not None and after is not None:
            raise BadCommand("give before or after, not both")
        limit = _query_int(request, "limit", 1, PAGE_MAX) or 50
        room = community.directory.rooms[info.name]
        try:
            stored = await kept.page(info.name, room.epoch, before, after, limit)
        except StoreError as exc:
            raise Unavailable(f"the message store cannot answer now: {exc}") from None
        return web.json_response(
            {
                "room": info.name,
                "epoch": room.epoch,
                "seq": room.seq,
                "messages": [_message_json(message) for message in stored],
            }
        )

    def _retention_json(name: str) -> dict[str, Any]:
        messages, days = kept.retention(name)
        return {"room": name, "messages": messages, "days": days}

    @refusals
    async def get_retention(request: web.Request) -> web.Response:
        return web.json_response(_retention_json(room_of(request).name))

    @refusals
    async def set_retention(request: web.Request) -> web.Response:
        """``{"messages"?, "days"?}``: the room's own limits (0 or null: the server's)."""
        info = room_of(request)
        body = await _body(request)
        messages = _field(body, "messages", int, required=False)
        days = _field(body, "days", int, required=False)
        keeper.set_retention(API_ACTOR, info.name, messages, days)
        return web.json_response(_retention_json(info.name))

    @refusals
    async def purge(request: web.Request) -> web.Response:
        info = room_of(request)
        gone = await _ask(lambda done: keeper.purge(info.name, done))
        assert isinstance(gone, int)
        return web.json_response({"room": info.name, "purged": gone})

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=_SPEC.read_bytes(), content_type=_JSON)

    routes = [
        web.get("/api/v1/openapi.json", openapi),
        web.get("/api/v1/rooms", list_rooms),
        web.post("/api/v1/rooms", create_room),
        web.get("/api/v1/rooms/{room}", get_room),
        web.get("/api/v1/rooms/{room}/members", members),
        web.post("/api/v1/rooms/{room}/messages", post_message),
        web.post("/api/v1/rooms/{room}/bans", ban),
        web.delete("/api/v1/rooms/{room}/bans/{user}", unban),
        web.post("/api/v1/rooms/{room}/kicks", kick),
        web.post("/api/v1/rooms/{room}/mutes", mute),
        web.delete("/api/v1/rooms/{room}/mutes/{user}", unmute),
        web.post("/api/v1/rooms/{room}/archive", archive),
        web.get("/api/v1/rooms/{room}/audit", audit),
        web.get("/api/v1/rooms/{room}/history", history),
        web.delete("/api/v1/rooms/{room}/history", purge),
        web.get("/api/v1/rooms/{room}/retention", get_retention),
        web.put("/api/v1/rooms/{room}/retention", set_retention),
        web.post("/api/v1/bans", server_ban),
        web.delete("/api/v1/bans/{user}", server_unban),
        web.get("/api/v1/users/{user}/sessions", sessions),
        web.delete("/api/v1/users/{user}/sessions", disconnect),
    ]
    return routes, _guard(keys)

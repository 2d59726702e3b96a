"""Protocol v2 (docs/protocol.md, "Version 2"): golden vectors both ways, the v1 decoding
rules a v1 session keeps, v1_of, names and tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from roomchat.cli import cli
from roomchat.protocol import (
    ERROR_CODES,
    FEATURES,
    MAX_ID_LENGTH,
    AuditEntry,
    AuditLog,
    BadLine,
    Ban,
    CommandDecoder,
    CreateRoom,
    DeleteMessage,
    EditMessage,
    Error,
    EventDecoder,
    Hello,
    History,
    HistoryMessage,
    HistoryPage,
    JoinRoom,
    Kick,
    LeaveRoom,
    MarkRead,
    Message,
    MessageDeleted,
    MessageEdited,
    Moderated,
    Mute,
    OpenDm,
    ParticipationStatus,
    Ping,
    Pong,
    Quit,
    RateLimited,
    RoomAdded,
    RoomListing,
    RoomParticipation,
    RoomRemoved,
    Rooms,
    SendMessage,
    ServerPing,
    ServerPong,
    SetRetention,
    SetRole,
    Shutdown,
    StartTyping,
    Typing,
    UserMessage,
    Welcome,
    encode,
    encode_head,
    encode_tail_v2,
    name_key,
    v1_of,
    valid_name,
)
from roomchat.tokens import TOKEN_MAX_LENGTH, mint, token_expiry, verify
from roomchat.tokens_cli import parse_ttl

TOKEN = "1767225600.5HTO4rCYZtmrft-YHa3fMDRgSIiQ66gPYND6zSofYDE"
SECRET = b"0123456789abcdef0123456789abcdef"

# --- golden vectors (docs/protocol.md, "Version 2", "Exact bytes") -------------------

GOLDEN_V2: list[tuple[bytes, Message]] = [
    # commands
    (b'{"_ct":"hello","v":2}', Hello(2)),
    (
        b'{"_ct":"hello","v":2,"name":"alice","token":"' + TOKEN.encode() + b'","id":"h1"}',
        Hello(2, "alice", TOKEN, "h1"),
    ),
    (b'{"_ct":"join_room","r":"general","h":20}', JoinRoom("general", history=20)),
    (b'{"_ct":"join_room","r":"general","after":41}', JoinRoom("general", after=41)),
    (b'{"_ct":"join_room","r":"general","h":0,"id":"7"}', JoinRoom("general", 0, id="7")),
    (b'{"_ct":"leave_room","r":"general","id":"8"}', LeaveRoom("general", "8")),
    (
        b'{"_ct":"send_message","r":"general","c":"hi","id":"9"}',
        SendMessage("general", "hi", "9"),
    ),
    (b'{"_ct":"quit","id":"q"}', Quit("q")),
    (b'{"_ct":"ping"}', Ping()),
    (b'{"_ct":"ping","id":"p1"}', Ping("p1")),
    (b'{"_ct":"pong"}', Pong()),
    # events
    (
        b'{"_et":"welcome","v":2,"s":"V1StGXR8_Z5jdHi6B-myT","u":"alice","t":"'
        + TOKEN.encode()
        + b'","f":["errors","names","history","heartbeat","flood_control","shutdown_notice",'
        b'"rooms","moderation","direct_messages","paging","edits","read_markers","typing"],'
        b'"hb":30,"id":"h1"}',
        Welcome(2, "V1StGXR8_Z5jdHi6B-myT", "alice", TOKEN, FEATURES, 30, "h1"),
    ),
    (
        b'{"_et":"welcome","v":2,"s":"s1","u":"x3Ab_","t":"tok","f":[],"hb":0}',
        Welcome(2, "s1", "x3Ab_", "tok", (), 0),
    ),
    (
        b'{"_et":"error","code":"unknown_room","msg":"no room named \'x\'",'
        b'"cmd":"join_room","id":"7"}',
        Error("unknown_room", "no room named 'x'", "join_room", "7"),
    ),
    (
        b'{"_et":"error","code":"idle_timeout","msg":"nothing received for 60 s"}',
        Error("idle_timeout", "nothing received for 60 s"),
    ),
    (
        b'{"_et":"user_message","r":"general","u":"alice","c":"hi","q":42,"ts":1764355200123}',
        UserMessage("general", "alice", "hi", 42, 1764355200123),
    ),
    (
        b'{"_et":"room_participation","r":"general","u":"alice","s":"joined","ts":1764355200123}',
        RoomParticipation("general", "alice", "joined", 1764355200123),
    ),
    (
        b'{"_et":"history","r":"general","ms":[{"u":"bob","c":"hey","q":40,"ts":1764355100000},'
        b'{"u":"alice","c":"hi","q":41,"ts":1764355200000}],"q":41,"gap":false}',
        History(
            "general",
            (
                HistoryMessage("bob", "hey", 40, 1764355100000),
                HistoryMessage("alice", "hi", 41, 1764355200000),
            ),
            41,
            False,
        ),
    ),
    (b'{"_et":"history","r":"general","ms":[],"q":0,"gap":true}', History("general", (), 0, True)),
    # lasting history (docs/protocol.md, "History that lasts")
    (
        b'{"_et":"history","r":"general","ms":[{"u":"bob","c":"hey!","q":40,"ts":1764355100000,'
        b'"ed":1764355150000},{"u":"bob","c":"","q":41,"ts":1764355200000,"ed":1764355250000,'
        b'"del":true}],"q":97,"gap":false,"e":"3f9c2a1b7d40","id":"p1"}',
        History(
            "general",
            (
                HistoryMessage("bob", "hey!", 40, 1764355100000, 1764355150000),
                HistoryMessage("bob", "", 41, 1764355200000, 1764355250000, True),
            ),
            97,
            False,
            "3f9c2a1b7d40",
            "p1",
        ),
    ),
    (
        b'{"_ct":"join_room","r":"general","after":41,"e":"3f9c2a1b7d40"}',
        JoinRoom("general", None, 41, epoch="3f9c2a1b7d40"),
    ),
    (
        b'{"_ct":"history","r":"general","before":42,"limit":20,"id":"p1"}',
        HistoryPage("general", 42, None, 20, None, "p1"),
    ),
    (
        b'{"_ct":"history","r":"general","after":41,"limit":200,"e":"3f9c2a1b7d40"}',
        HistoryPage("general", None, 41, 200, "3f9c2a1b7d40"),
    ),
    (
        b'{"_ct":"edit_message","r":"general","q":40,"c":"hey!","id":"e1"}',
        EditMessage("general", 40, "hey!", "e1"),
    ),
    (b'{"_ct":"delete_message","r":"general","q":41}', DeleteMessage("general", 41)),
    (b'{"_ct":"mark_read","r":"general","q":97}', MarkRead("general", 97)),
    (b'{"_ct":"typing","r":"general"}', StartTyping("general")),
    (
        b'{"_ct":"set_retention","r":"general","n":10000,"days":30}',
        SetRetention("general", 10000, 30),
    ),
    (
        b'{"_et":"message_edited","r":"general","q":40,"u":"bob","c":"hey!","ts":1764355150000}',
        MessageEdited("general", 40, "bob", "hey!", 1764355150000),
    ),
    (
        b'{"_et":"message_deleted","r":"general","q":41,"u":"carol","ts":1764355250000}',
        MessageDeleted("general", 41, "carol", 1764355250000),
    ),
    (b'{"_et":"typing","r":"general","u":"bob"}', Typing("general", "bob")),
    (
        b'{"_et":"rooms","rs":[{"n":"general","d":"Anything goes","un":3,"rd":97}]}',
        Rooms((RoomListing("general", "Anything goes", unread=3, read=97),)),
    ),
    (b'{"_et":"ping"}', ServerPing()),
    (b'{"_et":"pong","id":"p1"}', ServerPong("p1")),
    (b'{"_et":"pong"}', ServerPong()),
    (b'{"_et":"rate_limited","retry_ms":250}', RateLimited(250)),
    (
        b'{"_et":"shutdown","reconnect_ms":2000,"msg":"server restarting"}',
        Shutdown(2000, "server restarting"),
    ),
    # community (docs/moderation.md)
    (
        b'{"_ct":"create_room","r":"games","d":"board games","p":true,"id":"c1"}',
        CreateRoom("games", "board games", True, "c1"),
    ),
    (b'{"_ct":"kick","r":"games","u":"bob","why":"be nice"}', Kick("games", "bob", "be nice")),
    (b'{"_ct":"ban","u":"bob","r":"games","s":600}', Ban("bob", "games", 600)),
    (b'{"_ct":"mute","u":"bob"}', Mute("bob")),
    (
        b'{"_ct":"set_role","r":"games","u":"carol","role":"moderator"}',
        SetRole("games", "carol", "moderator"),
    ),
    (b'{"_ct":"open_dm","u":"bob"}', OpenDm("bob")),
    (
        b'{"_et":"rooms","rs":[{"n":"general","d":"Anything goes"},'
        b'{"n":"games","d":"","p":true,"role":"owner"},'
        b'{"n":"dm:alice+bob","d":"","p":true,"dm":"bob"}]}',
        Rooms(
            (
                RoomListing("general", "Anything goes"),
                RoomListing("games", "", True, None, "owner"),
                RoomListing("dm:alice+bob", "", True, "bob"),
            )
        ),
    ),
    (
        b'{"_et":"room_added","rm":{"n":"games","d":"board games"}}',
        RoomAdded(RoomListing("games", "board games")),
    ),
    (b'{"_et":"room_removed","r":"games","why":"archived"}', RoomRemoved("games", "archived")),
    (
        b'{"_et":"moderation","r":"games","by":"alice","what":"ban","u":"bob","until":1764355800000,'
        b'"why":"spam","ts":1764355200000}',
        Moderated("games", "alice", "ban", "bob", 1764355800000, None, None, "spam", 1764355200000),
    ),
    (
        b'{"_et":"audit","r":"games","es":[{"ts":1764355200000,"by":"alice","what":"kick",'
        b'"u":"bob"}],"id":"a1"}',
        AuditLog("games", (AuditEntry(1764355200000, "alice", "kick", "bob"),), "a1"),
    ),
]
IDS = [golden.decode()[:48] for golden, _ in GOLDEN_V2]


def _decode_one(line: bytes, version: int = 2, *, command: bool = False) -> object:
    decoder: CommandDecoder | EventDecoder
    if command or line.startswith(b'{"_ct"'):
        decoder = CommandDecoder(version=version)
    else:
        decoder = EventDecoder()
    out = decoder.feed(line + b"\r\n")
    assert len(out) == 1, out
    return out[0]


@pytest.mark.parametrize(("golden", "message"), GOLDEN_V2, ids=IDS)
def test_encode_v2_matches_golden(golden: bytes, message: Message) -> None:
    assert encode(message) == golden + b"\r\n"


@pytest.mark.parametrize(("golden", "message"), GOLDEN_V2, ids=IDS)
@pytest.mark.parametrize("version", [1, 2])
def test_decode_v2_golden(golden: bytes, message: Message, version: int) -> None:
    decoded = _decode_one(golden, version)
    assert decoded == message
    assert type(decoded) is type(message)


def test_docs_list_every_v2_golden_vector() -> None:
    with open("docs/protocol.md", encoding="utf-8") as docs:
        text = docs.read()
    for golden, _ in GOLDEN_V2:
        assert golden.decode() in text, golden


def test_every_error_code_is_documented() -> None:
    with open("docs/protocol.md", encoding="utf-8") as docs:
        text = docs.read()
    for code in ERROR_CODES:
        assert f"| `{code}` |" in text, code


def test_v1_messages_unchanged_by_the_new_optional_fields() -> None:
    assert encode(JoinRoom("test")) == b'{"_ct":"join_room","r":"test"}\r\n'
    assert encode(Quit()) == b'{"_ct":"quit"}\r\n'
    assert (
        encode(UserMessage("r", "u", "c")) == b'{"_et":"user_message","r":"r","u":"u","c":"c"}\r\n'
    )
    assert (
        encode(RoomParticipation("r", "u", "left"))
        == b'{"_et":"room_participation","r":"r","u":"u","s":"left"}\r\n'
    )


# --- what a v1 session's decoder keeps from v1 -------------------------------------

# v1 ignores unknown fields whatever their type: a v1 session must go on doing so for the
# fields v2 gave a meaning (and a type) to.
ILL_TYPED_V2_FIELDS = [
    (b'{"_ct":"join_room","r":"general","id":5}', JoinRoom("general")),
    (b'{"_ct":"join_room","r":"general","h":"x","after":-1}', JoinRoom("general")),
    (b'{"_ct":"join_room","r":"general","h":-3}', JoinRoom("general")),
    (b'{"_ct":"leave_room","r":"general","id":true}', LeaveRoom("general")),
    (b'{"_ct":"send_message","r":"g","c":"x","id":["a"]}', SendMessage("g", "x")),
    (b'{"_ct":"send_message","r":"g","c":"x","id":"' + b"i" * 65 + b'"}', SendMessage("g", "x")),
    (b'{"_ct":"quit","id":{}}', Quit()),
]


@pytest.mark.parametrize(("line", "v1"), ILL_TYPED_V2_FIELDS, ids=repr)
def test_v1_session_decodes_ill_typed_v2_fields_as_v1_does(line: bytes, v1: Message) -> None:
    decoded = _decode_one(line, version=1)
    assert decoded == v1
    assert type(decoded) is type(v1)


@pytest.mark.parametrize(("line", "v1"), ILL_TYPED_V2_FIELDS, ids=repr)
def test_v2_session_gets_a_bad_line_naming_the_command(line: bytes, v1: Message) -> None:
    decoder = CommandDecoder(version=1)
    decoder.upgrade()
    assert decoder.version == 2
    [bad] = decoder.feed(line + b"\n")
    assert isinstance(bad, BadLine)
    assert bad.command == json.loads(line)["_ct"]
    ident = json.loads(line).get("id")
    assert bad.id == (ident if isinstance(ident, str) and len(ident) <= MAX_ID_LENGTH else None)


def test_well_typed_v2_fields_reach_a_v1_session_decoded() -> None:
    # The server's v1 path reads only room and content: the rest is ignored there.
    [item] = CommandDecoder().feed(b'{"_ct":"join_room","r":"g","h":5,"id":"j"}\n')
    assert item == JoinRoom("g", 5, None, "j")


@pytest.mark.parametrize(
    ("line", "command", "ident", "reason"),
    [
        (b'{"_ct":"hello","v":"2","id":"h"}', "hello", "h", "Expected `int`, got `str` - at `$.v`"),
        (b'{"_ct":"join_room","id":"j"}', "join_room", "j", "Object missing required field `r`"),
        (b'{"_ct":"frobnicate","id":"f"}', "frobnicate", "f", "Invalid value 'frobnicate'"),
        (b'{"_ct":"ping","id":"' + b"i" * 65 + b'"}', "ping", None, "length <= 64"),
        (b'{"id":"x"}', None, "x", "Object missing required field `_ct`"),
        (b"[1, 2]", None, None, "Expected `object`"),
        (b"not json", None, None, "malformed"),
    ],
)
@pytest.mark.parametrize("version", [1, 2])
def test_bad_lines_tell_the_command_and_id_when_they_can(
    line: bytes, command: str | None, ident: str | None, reason: str, version: int
) -> None:
    bad = _decode_one(line, version, command=True)
    assert isinstance(bad, BadLine)
    assert (bad.command, bad.id) == (command, ident)
    assert reason in bad.reason


def test_decoder_version_is_checked() -> None:
    with pytest.raises(ValueError):
        CommandDecoder(version=3)


# --- v1_of and the split encoding the server's hot path uses -------------------------

STATUSES: list[ParticipationStatus] = ["joined", "left"]
names = st.text()  # rooms and users: any text, as the property must hold for any


@given(
    room=names,
    user=names,
    content=st.text(),
    seq=st.integers(0, 2**63 - 1),
    ts=st.integers(0, 2**53),
)
def test_v1_of_user_message(room: str, user: str, content: str, seq: int, ts: int) -> None:
    v2 = encode(UserMessage(room, user, content, seq, ts))
    assert v1_of(v2) == encode(UserMessage(room, user, content))
    # the way the server builds it: a cached head, the content, a v2 or v1 tail
    head = encode_head(UserMessage(room, user, ""))
    body = head + msgspec.json.encode(content)
    assert body + encode_tail_v2(seq, ts) == v2
    assert v1_of(body + encode_tail_v2(seq, ts)) == body + b"}\r\n"


@given(
    room=names,
    user=names,
    status=st.sampled_from(["joined", "left"]),
    ts=st.integers(0, 2**53),
)
def test_v1_of_room_participation(room: str, user: str, status: str, ts: int) -> None:
    assert status in ("joined", "left")
    v2 = encode(RoomParticipation(room, user, "joined" if status == "joined" else "left", ts))
    assert v1_of(v2) == encode(
        RoomParticipation(room, user, "joined" if status == "joined" else "left")
    )


@pytest.mark.parametrize(
    "content", [',"q":1,"ts":2}', '","q":5', '\\",\\"q\\":', ',"ts":', '"', "\\", ""]
)
def test_v1_of_with_lookalike_content(content: str) -> None:
    v2 = encode(UserMessage(',"q":', ',"ts":', content, 7, 8))
    assert v1_of(v2) == encode(UserMessage(',"q":', ',"ts":', content))


def test_v1_of_a_v1_line_is_that_line() -> None:
    line = encode(UserMessage("r", "u", "c"))
    assert v1_of(line) == line


# --- names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "alice", "Alice.B-2_x", "x3Ab_", "-", ".", "a" * 32, "0123456789"]
)
def test_valid_names(name: str) -> None:
    assert valid_name(name)


@pytest.mark.parametrize(
    "name", ["", "a" * 33, "al ice", "alicé", "ali\nce", "alice\n", "a/b", "a@b", "\uff21", "名前"]
)
def test_invalid_names(name: str) -> None:
    assert not valid_name(name)


def test_names_are_unique_ignoring_ascii_case() -> None:
    assert name_key("Alice") == name_key("ALICE") == name_key("alice")
    assert name_key("alice") != name_key("alice.")


# --- tokens ------------------------------------------------------------------------


def test_token_golden() -> None:
    assert mint(SECRET, "alice", 1767225600) == TOKEN
    assert token_expiry(TOKEN) == 1767225600


def test_token_verifies_until_its_expiry() -> None:
    assert verify(SECRET, "alice", TOKEN, now=1767225599.9)
    assert not verify(SECRET, "alice", TOKEN, now=1767225600)


@pytest.mark.parametrize(
    ("name", "token", "secret"),
    [
        ("Alice", TOKEN, SECRET),  # bound to the exact name
        ("bob", TOKEN, SECRET),
        ("alice", TOKEN, b"another secret of 32 bytes......"),
        ("alice", TOKEN[:-1], SECRET),
        ("alice", TOKEN + "A", SECRET),
        ("alice", "1767225601" + TOKEN[10:], SECRET),  # a later expiry, same MAC
        ("alice", "01767225600" + TOKEN[10:], SECRET),  # leading zero
        ("alice", "", SECRET),
        ("alice", ".", SECRET),
        ("alice", "x.y", SECRET),
        ("alice", "1767225600", SECRET),
        ("alice", "١٧٦." + TOKEN[11:], SECRET),  # non-ASCII digits
        ("alice", "1" * (TOKEN_MAX_LENGTH + 1), SECRET),
    ],
)
def test_token_refused(name: str, token: str, secret: bytes) -> None:
    assert not verify(secret, name, token, now=0)


def test_token_needs_a_real_secret() -> None:
    with pytest.raises(ValueError):
        mint(b"short", "alice", 1767225600)
    with pytest.raises(ValueError):
        verify(b"short", "alice", TOKEN, now=0)
    with pytest.raises(ValueError):
        mint(SECRET, "alice", 0)


@given(
    name=st.text(min_size=1, max_size=32), expiry=st.integers(1, 10**11), now=st.integers(0, 10**11)
)
def test_token_round_trip(name: str, expiry: int, now: int) -> None:
    token = mint(SECRET, name, expiry)
    assert len(token) <= TOKEN_MAX_LENGTH
    assert verify(SECRET, name, token, now) == (now < expiry)


# --- roomchat token ------------------------------------------------------------------


def test_token_command(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    before = int(time.time())
    result = CliRunner().invoke(cli, ["token", "alice", "--secret-file", str(secret)])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    expiry = token_expiry(token)
    assert expiry is not None and before + 30 * 86400 <= expiry <= int(time.time()) + 30 * 86400
    assert verify(SECRET, "alice", token, now=time.time())
    result = CliRunner().invoke(
        cli, ["token", "alice", "--secret-file", str(secret), "--ttl", "15m"]
    )
    assert (token_expiry(result.output.strip()) or 0) <= int(time.time()) + 900


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "al ice"], "1-32 ASCII"),
        (["token", "alice", "--ttl", "0"], "invalid duration"),
        (["token", "alice", "--ttl", "3w"], "invalid duration"),
    ],
)
def test_token_command_refuses(tmp_path: Path, args: list[str], message: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    result = CliRunner().invoke(cli, [*args, "--secret-file", str(secret)])
    assert result.exit_code != 0
    assert message in result.output


@pytest.mark.parametrize("content", [None, b"too short\n"])
def test_token_command_needs_a_secret(tmp_path: Path, content: bytes | None) -> None:
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_bytes(content)
    with pytest.raises(click.ClickException):
        cli.main(["token", "alice", "--secret-file", str(secret)], standalone_mode=False)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("15m", 900), ("2h", 7200), ("30d", 2592000)]
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds

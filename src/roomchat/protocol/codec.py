"""Encoding and sans-I/O decoding of protocol v1 and v2 lines.

Nothing here touches a socket, an event loop or a clock: feed bytes in, take
messages out (docs/architecture.md: the layers only point one way).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from roomchat.protocol.messages import (
    MAX_ID_LENGTH,
    Command,
    Event,
    JoinRoom,
    LeaveRoom,
    Message,
    Quit,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
)

__all__ = [
    "DEFAULT_MAX_LINE_LENGTH",
    "MESSAGE_TAIL",
    "BadLine",
    "CommandDecoder",
    "EventDecoder",
    "LineDecoder",
    "LineTooLong",
    "encode",
    "encode_head",
    "encode_messages",
    "encode_tail_v2",
    "encode_ts_tail_v2",
    "encode_user",
    "encode_user_joined_room",
    "encode_users",
    "joined_event",
    "left_event",
    "v1_of",
]

#: Default cap on one line's length in bytes, excluding its terminator.
DEFAULT_MAX_LINE_LENGTH = 64 * 1024

_encoder = msgspec.json.Encoder()
_encode_lines = _encoder.encode_lines


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder_for(message_type: Any) -> msgspec.json.Decoder[Any]:
    # msgspec decoders are stateless: one per message type serves every connection.
    decoder = _decoders.get(message_type)
    if decoder is None:
        decoder = _decoders[message_type] = msgspec.json.Decoder(message_type)
    return decoder


def encode(message: Message) -> bytes:
    """Serialise one message as its wire line: the exact JSON of docs/protocol.md + CRLF."""
    return _encoder.encode(message) + b"\r\n"


def encode_user(user_id: str) -> bytes:
    """One user id as it appears in a ``user_joined_room`` list (a JSON string)."""
    return _encoder.encode(user_id)


def encode_users(users: Iterable[str]) -> bytes:
    """The inside of a ``user_joined_room`` list: the ids' JSON strings, comma-separated
    (``b'"alice","bob"'``). A list kept in this form grows by ``b"," + encode_user(id)``."""
    return _encoder.encode(tuple(users))[1:-1]


def encode_user_joined_room(room: str, users: bytes) -> bytes:
    """``encode(UserJoinedRoom(room, ids))`` from ``encode_users(ids)``: a big room's list
    is kept encoded and copied per join rather than encoded again."""
    head, _, tail = encode(UserJoinedRoom(room, ())).rpartition(b"[]")
    return b"".join((head, b"[", users, b"]", tail))


def joined_event(room: str, user_id: str) -> bytes:
    """The v1 ``room_participation`` "joined" line (presence announces it)."""
    return encode(RoomParticipation(room, user_id, "joined"))


def left_event(room: str, user_id: str) -> bytes:
    """The v1 ``room_participation`` "left" line."""
    return encode(RoomParticipation(room, user_id, "left"))


#: What follows a message's last field value on the wire.
MESSAGE_TAIL = b"}\r\n"


def encode_head(message: Message) -> bytes:
    """The wire bytes of ``message`` up to (not including) the value of its last field.

    The last field must be a string left empty: ``encode_head(UserMessage(room, user, ""))``
    is ``{"_et":"user_message","r":...,"u":...,"c":``. Adding the JSON of the content and
    :data:`MESSAGE_TAIL` gives exactly ``encode(UserMessage(room, user, content))``; hot
    paths cache the head per (room, user) so the wire format stays written once, here.
    """
    line = encode(message)
    empty_last = b'""' + MESSAGE_TAIL
    if not line.endswith(empty_last):
        raise ValueError(f"{type(message).__name__} does not end with an empty string field")
    return line[: -len(empty_last)]


def encode_messages(head: bytes, contents: list[str]) -> bytes:
    """The ``user_message`` lines of ``contents`` under one :func:`encode_head`: exactly
    ``b"".join(head + <JSON of content> + MESSAGE_TAIL for each)``, in one encoding call.
    msgspec writes each content's JSON on its own line, and a JSON string cannot hold
    a newline (it is escaped): each newline is where a tail and the next head go."""
    # Every newline becomes a tail and a head: the last one's head is cut, and the run
    # copied once (a run is a whole read's worth: each copy counts).
    if not contents:
        return b""
    lines = _encode_lines(contents).replace(b"\n", MESSAGE_TAIL + head)
    return b"".join((head, memoryview(lines)[: -len(head)]))


def encode_tail_v2(seq: int, timestamp: int) -> bytes:
    """What follows the content of a v2 ``user_message``: ``,"q":SEQ,"ts":TS}`` + CRLF.

    ``encode_head(UserMessage(r, u, "")) + <JSON of content> + encode_tail_v2(q, ts)`` is
    exactly ``encode(UserMessage(r, u, content, q, ts))``; with :data:`MESSAGE_TAIL`
    instead of this tail it is the v1 line.
    """
    return b',"q":%d,"ts":%d}\r\n' % (seq, timestamp)


def encode_ts_tail_v2(timestamp: int) -> bytes:
    """What replaces :data:`MESSAGE_TAIL` at the end of a v1 ``room_participation`` to
    make it v2: ``,"ts":TS}`` + CRLF (``line[:-3] + encode_ts_tail_v2(ts)``)."""
    return b',"ts":%d}\r\n' % timestamp


_V2_USER_MESSAGE_FIELDS = b',"q":'
_V2_PARTICIPATION_FIELDS = b',"ts":'


def v1_of(v2_line: bytes) -> bytes:
    """The v1 line of a v2 ``user_message`` or ``room_participation`` line (CRLF included).

    v2 appends its fields (``,"q":N,"ts":T`` or ``,"ts":T``) after the last v1 field, and
    ``,"q":`` / ``,"ts":`` cannot occur inside a JSON string (a ``"`` in a string is
    always escaped), so cutting at the last one and closing the object gives v1's bytes.
    A line with neither (already v1) is returned unchanged.
    """
    cut = v2_line.rfind(_V2_USER_MESSAGE_FIELDS)
    if cut < 0:
        cut = v2_line.rfind(_V2_PARTICIPATION_FIELDS)
        if cut < 0:
            return v2_line
    return v2_line[:cut] + MESSAGE_TAIL


@dataclass(frozen=True, slots=True)
class BadLine:
    """A complete line that is not a valid message. The session may carry on.

    ``command`` and ``id`` are the line's ``_ct`` and ``id`` when it is a JSON object
    that has them as strings (``id`` up to 64 characters): a v2 server echoes them in
    its ``bad_command`` error. They are found only on this (rare) path.
    """

    line: bytes
    reason: str
    command: str | None = None
    id: str | None = None


class _Probe(msgspec.Struct, gc=False):
    # What a bad line can still tell: its command tag and id, if any (any JSON types).
    ct: Any = msgspec.field(default=None, name="_ct")
    id: Any = None


_probe_decoder = msgspec.json.Decoder(_Probe)


def _bad_line(line: bytes, reason: str) -> BadLine:
    try:
        probe = _probe_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return BadLine(line, reason)
    command = probe.ct if isinstance(probe.ct, str) else None
    ident = probe.id if isinstance(probe.id, str) and len(probe.id) <= MAX_ID_LENGTH else None
    return BadLine(line, reason, command, ident)


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line grew past the limit. Its bytes were discarded as they arrived."""

    limit: int


T = TypeVar("T", Command, Event)

#: From how many bytes of complete lines a read is decoded through a memoryview.
_VIEW_FROM = 4096


def lines_within(data: bytes, end: int, limit: int) -> bool:
    """Whether every line of ``data[:end]`` (split at ``\\n``) is at most ``limit``
    bytes long: ``max(map(len, data[:end].split(b"\\n"))) <= limit``, without making
    the lines (a read of 256 KiB holds thousands): one ``rfind`` per window of
    ``limit + 1`` bytes. A window with a newline holds only lines that fit, and the
    next one starts after its last newline; a window without one is a line too long."""
    start = 0
    while end - start > limit:
        newline = data.rfind(b"\n", start, start + limit + 1)
        if newline < 0:
            return False
        start = newline + 1
    return True


class LineDecoder(Generic[T]):
    """Turns a byte stream into messages of one direction, line by line.

    - Lines end with ``\\n``; a ``\\r`` before it is dropped. Blank lines are skipped.
    - Any split of the input gives the same results (partial lines are kept).
    - A line longer than ``max_line_length`` bytes yields :class:`LineTooLong` once; its
      bytes are dropped as they stream in (memory stays bounded) up to the next newline,
      after which decoding resumes. Whether to go on is the caller's choice.
    - Invalid JSON, an unknown tag, missing or ill-typed fields, invalid UTF-8: a
      :class:`BadLine` value. The decoder never raises on any input.
    """

    __slots__ = ("_decode", "_decode_lines", "_discarding", "_max", "_partial")

    # Overridden by CommandDecoder to be lenient with v1 sessions.
    def _invalid(self, line: bytes, exc: msgspec.DecodeError) -> Any:
        return _bad_line(line, str(exc))

    def __init__(self, message_type: Any, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length < 1:
            raise ValueError("max_line_length must be positive")
        decoder = _decoder_for(message_type)
        self._decode = decoder.decode
        self._decode_lines = decoder.decode_lines
        self._max = max_line_length
        self._partial = bytearray()
        self._discarding = False

    @property
    def max_line_length(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held back, waiting for its end."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[T | BadLine | LineTooLong]:
        """Add received bytes; return every message completed by them, in order."""
        out: list[T | BadLine | LineTooLong] = []
        if self._discarding or self._partial:
            newline = data.find(b"\n")
            if newline < 0:
                self._hold(data, out)
                return out
            head, data = data[: newline + 1], data[newline + 1 :]
            if self._discarding:
                self._discarding = False
            else:
                self._partial += head
                line = bytes(self._partial)
                self._partial.clear()
                self._line(line[:-1], out)
        if not data:
            return out
        end = data.rfind(b"\n")
        if end < 0:
            self._hold(data, out)
            return out
        # The fast path: every complete line of the read decoded by msgspec in one call
        # (its decode_lines keeps lines apart: a string cannot span two). Any line that
        # is bad, blank-but-spaces or too long makes it fail as a whole; then the lines
        # are taken one by one below, with their exact outcomes.
        if end <= self._max or lines_within(data, end, self._max):
            # A big read is decoded through a view, not copied (msgspec copies what it
            # keeps); a small one is copied, which costs less than making a view.
            complete = data[:end] if end < _VIEW_FROM else memoryview(data)[:end]
            try:
                decoded = self._decode_lines(complete)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                pass
            else:
                if out:
                    out += decoded
                else:
                    out = decoded
                if end + 1 < len(data):
                    self._hold(data[end + 1 :], out)
                return out
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            self._line(line, out)
        if rest:
            self._hold(rest, out)
        return out

    def feed_eof(self) -> list[T | BadLine | LineTooLong]:
        """The peer closed its side: an unterminated final line is decoded as a line."""
        out: list[T | BadLine | LineTooLong] = []
        if self._partial and not self._discarding:
            line = bytes(self._partial)
            self._line(line, out)
        self._partial.clear()
        self._discarding = False
        return out

    def _hold(self, data: bytes, out: list[T | BadLine | LineTooLong]) -> None:
        if self._discarding:
            return
        self._partial += data
        # + 1: room for the "\r" of a "\r\n" whose "\n" has not arrived yet.
        if len(self._partial) > self._max + 1:
            self._partial.clear()
            self._discarding = True
            out.append(LineTooLong(self._max))

    def _line(self, line: bytes, out: list[T | BadLine | LineTooLong]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max:
            out.append(LineTooLong(self._max))
            return
        if not line or line.isspace():
            return
        try:
            out.append(self._decode(line))
        except msgspec.DecodeError as exc:
            out.append(self._invalid(line, exc))
        except UnicodeDecodeError as exc:
            out.append(BadLine(line, str(exc)))
        except RecursionError:
            # msgspec recurses per nesting level: "[[[[..." a few KB deep exhausts the
            # stack. That is bad input like any other, not a reason to stop.
            out.append(BadLine(line, "JSON nested too deeply"))


# v1's commands as v1 decodes them: only v1's fields, anything else ignored whatever its
# type. Used only when a v1 session's line fails the v2 decoding.
class _V1JoinRoom(msgspec.Struct, frozen=True, gc=False, tag_field="_ct", tag="join_room"):
    room: str = msgspec.field(name="r")


class _V1LeaveRoom(msgspec.Struct, frozen=True, gc=False, tag_field="_ct", tag="leave_room"):
    room: str = msgspec.field(name="r")


class _V1SendMessage(msgspec.Struct, frozen=True, gc=False, tag_field="_ct", tag="send_message"):
    room: str = msgspec.field(name="r")
    content: str = msgspec.field(name="c")


class _V1Quit(msgspec.Struct, frozen=True, gc=False, tag_field="_ct", tag="quit"):
    pass


_v1_decoder = msgspec.json.Decoder(_V1JoinRoom | _V1LeaveRoom | _V1SendMessage | _V1Quit)


def _v1_command(line: bytes) -> Command | None:
    """``line`` decoded with v1's rules (extra fields ignored), or None."""
    try:
        v1 = _v1_decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(v1, _V1SendMessage):
        return SendMessage(v1.room, v1.content)
    if isinstance(v1, _V1JoinRoom):
        return JoinRoom(v1.room)
    if isinstance(v1, _V1LeaveRoom):
        return LeaveRoom(v1.room)
    return Quit()


class CommandDecoder(LineDecoder[Command]):
    """Decodes what a client sends (the server's side): v1's commands and v2's.

    Version 1 (the default, until :meth:`upgrade`): a v1 command whose v2 fields are
    ill-typed (``"id": 5``, ``"h": "x"``) is decoded as v1 decodes it, those fields
    ignored, because to v1 they are unknown fields. Version 2: such a line is a
    :class:`BadLine` (the server answers ``bad_command``). Well-typed v2 fields and v2
    commands (``hello``, ``ping``, ``pong``) are decoded in both; a v1 session ignores
    them (docs/protocol.md).
    """

    __slots__ = ("_version",)

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH, *, version: int = 1) -> None:
        super().__init__(Command, max_line_length)
        if version not in (1, 2):
            raise ValueError("version must be 1 or 2")
        self._version = version

    @property
    def version(self) -> int:
        return self._version

    def upgrade(self) -> None:
        """The session now speaks version 2 (the server sent ``welcome``)."""
        self._version = 2

    def _invalid(self, line: bytes, exc: msgspec.DecodeError) -> Any:
        if self._version == 1 and isinstance(exc, msgspec.ValidationError):
            command = _v1_command(line)
            if command is not None:
                return command
        return _bad_line(line, str(exc))


class EventDecoder(LineDecoder[Event]):
    """Decodes what a server sends (the client's side)."""

    __slots__ = ()

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        super().__init__(Event, max_line_length)

"""Encoding and sans-I/O decoding of protocol v1 lines.

Nothing here touches a socket, an event loop or a clock: feed bytes in, take
messages out (see shared/STYLE.md, "The protocol does no I/O").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from roomchat.protocol.messages import Command, Event, Message

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
]

#: Default cap on one line's length in bytes, excluding its terminator.
DEFAULT_MAX_LINE_LENGTH = 64 * 1024

_encoder = msgspec.json.Encoder()


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


@dataclass(frozen=True, slots=True)
class BadLine:
    """A complete line that is not a valid message. The session may carry on."""

    line: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line grew past the limit. Its bytes were discarded as they arrived."""

    limit: int


T = TypeVar("T", Command, Event)


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

    __slots__ = ("_decode", "_discarding", "_max", "_partial")

    def __init__(self, message_type: Any, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length < 1:
            raise ValueError("max_line_length must be positive")
        self._decode = _decoder_for(message_type).decode
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
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            out.append(BadLine(line, str(exc)))
        except RecursionError:
            # msgspec recurses per nesting level: "[[[[..." a few KB deep exhausts the
            # stack. That is bad input like any other, not a reason to stop.
            out.append(BadLine(line, "JSON nested too deeply"))


class CommandDecoder(LineDecoder[Command]):
    """Decodes what a client sends (the server's side)."""

    __slots__ = ()

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        super().__init__(Command, max_line_length)


class EventDecoder(LineDecoder[Event]):
    """Decodes what a server sends (the client's side)."""

    __slots__ = ()

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        super().__init__(Event, max_line_length)

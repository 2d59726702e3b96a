"""The stamp every load message carries at the start of its content.

``"<sender> <seq> <sent> <phase>|"`` then padding: the sender's global user index,
its sequence number for that room, the send time (``time.monotonic_ns()``, one clock
for every process of the machine), all in hex, and ``m`` (measured) or ``w`` (warm-up).
The line is built from pre-encoded parts: the content is ASCII without quotes or
backslashes, so no JSON escaping is needed (PROTOCOL.md, send_message).
"""

from __future__ import annotations

import msgspec

__all__ = [
    "JOINED_MARK",
    "MEASURED",
    "MEASURED_MARK",
    "MESSAGE_MARK",
    "PARTICIPATION_MARK",
    "WARMUP",
    "Stamp",
    "line_head",
    "make_line",
    "parse_stamp",
]

MEASURED = "m"
WARMUP = "w"
_TAIL = b'"}\r\n'

# What a counting receiver (one that does not decode) looks for in the raw bytes. The
# stamp's fields are hex and its padding is "x", so " m|" occurs once per measured message
# and nowhere else in the tool's own traffic.
MESSAGE_MARK = b'"_et":"user_message"'
MEASURED_MARK = b" " + MEASURED.encode() + b"|"
JOINED_MARK = b'"_et":"user_joined_room"'
PARTICIPATION_MARK = b'"_et":"room_participation"'


def line_head(room: str) -> bytes:
    """The bytes of a send_message line up to its content, for one room."""
    return b'{"_ct":"send_message","r":' + msgspec.json.encode(room) + b',"c":"'


def make_line(head: bytes, sender: int, seq: int, sent: int, phase: str, payload: int) -> bytes:
    content = f"{sender:x} {seq:x} {sent:x} {phase}|"
    if len(content) < payload:
        content += "x" * (payload - len(content))
    return head + content.encode() + _TAIL


class Stamp(msgspec.Struct, frozen=True, gc=False):
    sender: int
    seq: int
    sent: int
    measured: bool


def parse_stamp(content: str) -> Stamp | None:
    """The stamp of a message's content, or None when it carries none."""
    try:
        sender, seq, sent, rest = content.split(" ", 3)
        return Stamp(int(sender, 16), int(seq, 16), int(sent, 16), rest[0] == MEASURED)
    except (ValueError, IndexError):
        return None

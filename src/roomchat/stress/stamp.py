"""The stamp every load message carries at the start of its content.

``"<sender> <seq> <sent> <phase>|"`` then padding: the sender's global user index,
its sequence number for that room, the send time (``time.monotonic_ns()``, one clock
for every process of the machine), all in hex, and ``m`` (measured) or ``w`` (warm-up).
The line is built from pre-encoded parts: the codec's head of a send_message for the
room (:func:`roomchat.protocol.encode_head`), then the content, which is ASCII without
quotes or backslashes, so no JSON escaping is needed (docs/protocol.md, send_message).
"""

from __future__ import annotations

from roomchat.protocol import MESSAGE_TAIL, SendMessage, encode_head

__all__ = [
    "ERROR_MARK",
    "JOINED_MARK",
    "MEASURED",
    "MEASURED_MARK",
    "MESSAGE_MARK",
    "PARTICIPATION_MARK",
    "PING_MARK",
    "WARMUP",
    "Stamp",
    "line_head",
    "make_line",
    "parse_stamp",
]

MEASURED = "m"
WARMUP = "w"
_TAIL = b'"' + MESSAGE_TAIL  # the content's closing quote, then the line's end

# What a counting receiver (one that does not decode) looks for in the raw bytes. The
# stamp's fields are hex and its padding is "x", so " m|" occurs once per measured message
# and nowhere else in the tool's own traffic.
MESSAGE_MARK = b'"_et":"user_message"'
MEASURED_MARK = b" " + MEASURED.encode() + b"|"
JOINED_MARK = b'"_et":"user_joined_room"'
PARTICIPATION_MARK = b'"_et":"room_participation"'
# v2 (docs/protocol.md): an error's code comes right after its tag (the key order is
# fixed), so the code is the bytes from the end of this mark to the next quote; codes
# are plain ASCII words. A v2 user_message ends with ,"q":N,"ts":T after the content:
# digits only, so the marks above are unaffected.
ERROR_MARK = b'"_et":"error","code":"'
PING_MARK = b'"_et":"ping"'


def line_head(room: str) -> bytes:
    """The bytes of a send_message line up to its content (and its opening quote)."""
    return encode_head(SendMessage(room, "")) + b'"'


def make_line(head: bytes, sender: int, seq: int, sent: int, phase: str, payload: int) -> bytes:
    content = f"{sender:x} {seq:x} {sent:x} {phase}|"
    if len(content) < payload:
        content += "x" * (payload - len(content))
    return head + content.encode() + _TAIL


#: A parsed stamp: (sender, seq, sent, measured). A plain tuple, not a struct: building
#: and unpacking it is the cheapest way to hand four values back on the hot path.
Stamp = tuple[int, int, int, bool]


def parse_stamp(content: str) -> Stamp | None:
    """The stamp of a message's content, or None when it carries none.

    This runs once per checked delivery (the load tool's hot path), so it is one split
    and three int() calls; a malformed stamp is caught, not checked for beforehand.
    """
    try:
        sender, seq, sent, rest = content.split(" ", 3)
        return int(sender, 16), int(seq, 16), int(sent, 16), rest[:1] == MEASURED
    except ValueError:  # not four fields, or not hex
        return None

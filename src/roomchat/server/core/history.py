"""v2 history: what a room keeps of its last messages, and the ``history`` event built
from it for a join (docs/protocol.md, "History and catch-up").

A room holds its last runs of messages as they were fanned out (one C-level deque
append per run: the v1 lines are the bytes every v1 member got anyway) and gives a join
its last messages as ``(seq, ts, v1 line)`` entries (``ChatRoom.entries``). Only a v2
join reads them: it decodes the lines it sends (at most HISTORY_MAX) and encodes one
``history`` line with the protocol module.

With the Redis bus the entries come from the room's stream in Redis, read by the join
script atomically with the join's marker; the same :class:`Snapshot` shape carries them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from roomchat.protocol import History, HistoryMessage, UserMessage, encode

__all__ = [
    "Change",
    "Entry",
    "HistoryRequest",
    "Snapshot",
    "StoredMessage",
    "history_event",
    "page_event",
]

#: One held message: its sequence number, its server time (ms) and its v1 line.
Entry = tuple[int, int, bytes]
#: What became of a held message since: its new content (None: deleted) and when.
Change = tuple[str | None, int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A room's history at one point of its order: its latest sequence number and the
    held messages up to it, oldest first."""

    seq: int
    entries: Sequence[Entry]
    #: The epoch of the room's numbering ("": none known).
    epoch: str = ""
    #: Edits and deletions of held messages, by number.
    changes: Mapping[int, Change] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """What a v2 ``join_room`` asked for: ``h`` (the last N) or ``after`` (catch-up),
    and the epoch ``after`` counts in (``e``, if the client knows it)."""

    last: int | None = None
    after: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored message as it is now: ``content`` is None once deleted; ``edited``
    is the time (ms) of its last edit."""

    room: str
    seq: int
    ts: int
    user: str
    content: str | None
    edited: int | None = None


_decode_message = msgspec.json.Decoder(UserMessage).decode


def history_event(room: str, snapshot: Snapshot, request: HistoryRequest, cap: int) -> bytes:
    """The encoded ``history`` event answering ``request`` from ``snapshot``; at most
    ``cap`` messages (the server's history size)."""
    latest, held = snapshot.seq, snapshot.entries
    gap = False
    chosen: Sequence[Entry]
    restarted = bool(request.epoch and snapshot.epoch and request.epoch != snapshot.epoch)
    if request.after is not None and restarted:  # another numbering: the recent ones
        chosen, gap = list(held)[-cap:] if cap else [], True
    elif request.after is not None:
        after = request.after
        if after > latest:  # the count restarted: everything held is new to the client
            chosen, gap = held, True
        else:
            chosen = [entry for entry in held if entry[0] > after]
        if len(chosen) > cap:
            chosen = chosen[len(chosen) - cap :]
        if after < latest and (not chosen or chosen[0][0] > after + 1):
            gap = True
    elif request.last:
        count = min(request.last, cap)
        chosen = list(held)[-count:] if count else []
    else:
        chosen = []
    changes = snapshot.changes
    messages = []
    for seq, ts, line in chosen:
        try:
            message = _decode_message(line)
        except msgspec.DecodeError:
            continue  # not a user_message line (never, but never fail a join over it)
        change = changes.get(seq) if changes else None
        if change is None:
            messages.append(HistoryMessage(message.user_id, message.content, seq, ts))
        elif change[0] is None:
            messages.append(HistoryMessage(message.user_id, "", seq, ts, change[1], True))
        else:
            messages.append(HistoryMessage(message.user_id, change[0], seq, ts, change[1]))
    return encode(History(room, tuple(messages), latest, gap, snapshot.epoch or None))


def page_event(
    room: str,
    stored: Sequence[StoredMessage],
    latest: int,
    epoch: str,
    gap: bool = False,
    ident: str | None = None,
) -> bytes:
    """The encoded ``history`` event answering a page (``history`` command)."""
    messages = tuple(
        HistoryMessage(m.user, "", m.seq, m.ts, m.edited, True)
        if m.content is None
        else HistoryMessage(m.user, m.content, m.seq, m.ts, m.edited)
        for m in stored
    )
    return encode(History(room, messages, latest, gap, epoch or None, ident))

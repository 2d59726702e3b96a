"""The ``history`` event of a v2 join (history.py): the last N, catch-up after a
sequence number with and without a gap, a restarted count, the cap, and entries that
are not messages. Each event is decoded as a client decodes it."""

from __future__ import annotations

from itertools import repeat

import pytest

from roomchat.protocol import (
    EventDecoder,
    History,
    HistoryMessage,
    UserMessage,
    encode,
    joined_event,
)
from roomchat.server.core.history import Entry, HistoryRequest, Snapshot, history_event

ROOM = "general"
CAP = 100


def line(seq: int) -> bytes:
    """The v1 line of message number ``seq`` (as a room keeps it)."""
    return encode(UserMessage(ROOM, f"user{seq % 3}", f"message {seq}"))


def entry(seq: int) -> Entry:
    return (seq, 1_000 + seq, line(seq))


def held(first: int, last: int) -> list[Entry]:
    """Entries for messages ``first`` to ``last`` inclusive."""
    return [entry(seq) for seq in range(first, last + 1)]


def message(seq: int) -> HistoryMessage:
    return HistoryMessage(f"user{seq % 3}", f"message {seq}", seq, 1_000 + seq)


def decoded(event: bytes) -> History:
    """The one ``history`` event a client decodes from ``event``."""
    assert event.endswith(b"\r\n") and event.count(b"\n") == 1, event
    decoder = EventDecoder()
    (history,) = decoder.feed(event)
    assert decoder.buffered == 0
    assert isinstance(history, History), history
    return history


def history(
    snapshot: Snapshot, *, last: int | None = None, after: int | None = None, cap: int = CAP
) -> History:
    return decoded(history_event(ROOM, snapshot, HistoryRequest(last, after), cap))


def seqs(event: History) -> list[int]:
    return [m.seq for m in event.messages]


# -- the last N ----------------------------------------------------------------------


def test_last_n_gives_the_newest_n_oldest_first() -> None:
    event = history(Snapshot(7, held(3, 7)), last=2)
    assert event == History(ROOM, (message(6), message(7)), 7, False)


def test_last_n_beyond_what_is_held_gives_everything_held() -> None:
    event = history(Snapshot(7, held(3, 7)), last=50)
    assert event == History(ROOM, tuple(message(s) for s in range(3, 8)), 7, False)


def test_last_n_is_capped() -> None:
    event = history(Snapshot(10, held(1, 10)), last=10, cap=3)
    assert seqs(event) == [8, 9, 10]
    assert event.seq == 10
    assert not event.gap


@pytest.mark.parametrize("request_", [HistoryRequest(), HistoryRequest(last=0)])
def test_no_history_asked_gives_none_with_the_latest_seq(request_: HistoryRequest) -> None:
    event = decoded(history_event(ROOM, Snapshot(7, held(3, 7)), request_, CAP))
    assert event == History(ROOM, (), 7, False)


def test_last_n_of_an_empty_room() -> None:
    assert history(Snapshot(0, ()), last=5) == History(ROOM, (), 0, False)


def test_last_n_with_a_zero_cap_gives_nothing() -> None:
    assert history(Snapshot(7, held(3, 7)), last=5, cap=0) == History(ROOM, (), 7, False)


# -- catch-up after a sequence number ------------------------------------------------


def test_after_gives_what_followed_without_a_gap() -> None:
    event = history(Snapshot(7, held(3, 7)), after=5)
    assert event == History(ROOM, (message(6), message(7)), 7, False)


def test_after_the_oldest_held_but_one_is_no_gap() -> None:
    # after=2, oldest held 3: nothing the client misses.
    event = history(Snapshot(7, held(3, 7)), after=2)
    assert seqs(event) == [3, 4, 5, 6, 7]
    assert not event.gap


def test_after_messages_no_longer_held_is_a_gap() -> None:
    # after=1, oldest held 3: message 2 is gone.
    event = history(Snapshot(7, held(3, 7)), after=1)
    assert seqs(event) == [3, 4, 5, 6, 7]
    assert event.gap


def test_after_the_latest_gives_nothing_and_no_gap() -> None:
    assert history(Snapshot(7, held(3, 7)), after=7) == History(ROOM, (), 7, False)


def test_after_zero_in_an_empty_room_is_no_gap() -> None:
    assert history(Snapshot(0, ()), after=0) == History(ROOM, (), 0, False)


def test_after_with_nothing_held_but_messages_since_is_a_gap() -> None:
    # A room keeping no history (or having lost it): 3 to 5 were sent, none held.
    assert history(Snapshot(5, ()), after=2) == History(ROOM, (), 5, True)


def test_after_beyond_the_latest_is_a_restart_everything_and_a_gap() -> None:
    # The client saw number 50 before the room's count restarted at 1.
    event = history(Snapshot(4, held(1, 4)), after=50)
    assert event == History(ROOM, tuple(message(s) for s in range(1, 5)), 4, True)


def test_after_beyond_the_latest_of_an_empty_room_is_a_gap() -> None:
    assert history(Snapshot(0, ()), after=3) == History(ROOM, (), 0, True)


def test_after_beyond_the_latest_is_capped() -> None:
    event = history(Snapshot(10, held(1, 10)), after=99, cap=3)
    assert seqs(event) == [8, 9, 10]
    assert event.gap


def test_after_more_than_the_cap_gives_the_newest_and_a_gap() -> None:
    event = history(Snapshot(10, held(1, 10)), after=0, cap=3)
    assert seqs(event) == [8, 9, 10]
    assert event.seq == 10
    assert event.gap  # 1 to 7 were held but not sent


def test_after_exactly_the_cap_is_no_gap() -> None:
    event = history(Snapshot(10, held(1, 10)), after=7, cap=3)
    assert seqs(event) == [8, 9, 10]
    assert not event.gap


def test_after_takes_precedence_over_last() -> None:
    event = history(Snapshot(7, held(3, 7)), last=1, after=4)
    assert seqs(event) == [5, 6, 7]


# -- what the entries hold -----------------------------------------------------------


def test_a_line_that_is_not_a_user_message_is_skipped() -> None:
    entries = [entry(3), (4, 1004, joined_event(ROOM, "x")), (5, 1005, b"not json"), entry(6)]
    event = history(Snapshot(6, entries), after=2)
    assert event == History(ROOM, (message(3), message(6)), 6, False)
    event = history(Snapshot(6, entries), last=10)
    assert seqs(event) == [3, 6]


def test_a_run_of_several_messages_kept_as_one_entry_each() -> None:
    # A run (several lines from one sender, one turn) is kept as rooms.py keeps it:
    # split into lines without their CRLF, numbered from the run's first, one time.
    run = b"".join(line(seq) for seq in (4, 5, 6))
    lines = run.split(b"\r\n")[:3]
    entries = [entry(3), *zip(range(4, 7), repeat(2000), lines), entry(7)]
    event = history(Snapshot(7, entries), after=3)
    assert event.messages == (
        HistoryMessage("user1", "message 4", 4, 2000),
        HistoryMessage("user2", "message 5", 5, 2000),
        HistoryMessage("user0", "message 6", 6, 2000),
        message(7),
    )
    assert not event.gap
    assert seqs(history(Snapshot(7, entries), last=2)) == [6, 7]


def test_content_and_names_survive_the_round_trip() -> None:
    odd = encode(UserMessage(ROOM, "Zoë-1", 'quote " backslash \\ newline \n é 🎉'))
    event = history(Snapshot(1, [(1, 5, odd)]), last=1)
    assert event.messages == (
        HistoryMessage("Zoë-1", 'quote " backslash \\ newline \n é 🎉', 1, 5),
    )


def test_the_event_names_the_room_it_was_asked_for() -> None:
    event = decoded(history_event("python", Snapshot(1, [entry(1)]), HistoryRequest(1), CAP))
    assert event.room == "python"

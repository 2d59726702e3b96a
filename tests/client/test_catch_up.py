"""CatchUp, the reconnecting client's catch-up rules, on their own: no socket, no loop."""

from __future__ import annotations

from roomchat.client import CatchUp, HistoryEnd, HistoryStart, MissedMessages
from roomchat.protocol import History, HistoryMessage, UserMessage


def history(room: str, seqs: list[int], q: int, *, gap: bool = False) -> History:
    return History(room, tuple(HistoryMessage("bob", f"m{s}", s, 1000 + s) for s in seqs), q, gap)


def message(room: str, seq: int | None) -> UserMessage:
    if seq is None:
        return UserMessage(room, "bob", "v1")
    return UserMessage(room, "bob", f"m{seq}", seq, 1000 + seq)


def test_a_first_history_delivers_its_messages_and_sets_last_seq() -> None:
    catch_up = CatchUp()
    assert catch_up.after("general") is None
    events = catch_up.replay(history("general", [2, 3], 3))
    assert events == [message("general", 2), message("general", 3)]
    assert catch_up.last_seq == {"general": 3}
    assert catch_up.after("general") == 3


def test_an_empty_history_still_raises_last_seq_to_its_q() -> None:
    catch_up = CatchUp()
    assert catch_up.replay(history("general", [], 7)) == []
    assert catch_up.after("general") == 7


def test_live_messages_not_above_last_seq_are_dropped() -> None:
    catch_up = CatchUp()
    catch_up.replay(history("general", [1, 2], 2))
    assert not catch_up.accept(message("general", 1))
    assert not catch_up.accept(message("general", 2))
    assert catch_up.accept(message("general", 3))
    assert not catch_up.accept(message("general", 3))  # delivered once
    assert catch_up.after("general") == 3


def test_a_catch_up_skips_what_was_delivered() -> None:
    catch_up = CatchUp()
    for seq in (1, 2, 3):
        assert catch_up.accept(message("general", seq))
    # the server repeats messages the client has, then what it missed
    events = catch_up.replay(history("general", [2, 3, 4, 5], 5))
    assert events == [message("general", 4), message("general", 5)]
    assert catch_up.after("general") == 5


def test_a_gap_is_reported_first() -> None:
    catch_up = CatchUp()
    catch_up.accept(message("general", 1))
    events = catch_up.replay(history("general", [4, 5], 5, gap=True))
    assert events == [MissedMessages("general", 1), message("general", 4), message("general", 5)]
    assert catch_up.after("general") == 5


def test_a_restarted_count_is_a_loss_and_everything_is_new() -> None:
    catch_up = CatchUp()
    for seq in (1, 2, 3):
        catch_up.accept(message("general", seq))
    # q below last_seq: the server lost the room's history; its count began again
    events = catch_up.replay(history("general", [1], 1))
    assert events == [MissedMessages("general", 3), message("general", 1)]
    assert catch_up.after("general") == 1
    assert catch_up.accept(message("general", 2))


def test_rooms_are_kept_apart() -> None:
    catch_up = CatchUp()
    catch_up.replay(history("a", [1, 2], 2))
    catch_up.replay(history("b", [1], 1))
    assert catch_up.accept(message("b", 2))
    assert not catch_up.accept(message("a", 2))
    assert catch_up.replay(history("b", [1, 2, 3], 3)) == [message("b", 3)]
    assert catch_up.last_seq == {"a": 2, "b": 3}
    catch_up.forget("a")
    assert catch_up.last_seq == {"b": 3}
    assert catch_up.accept(message("a", 1))  # a new join starts afresh


def test_v1_messages_are_always_delivered_and_a_v1_rejoin_is_a_loss() -> None:
    catch_up = CatchUp()
    assert catch_up.missed("general") == MissedMessages("general", None)
    catch_up.accept(message("general", 4))
    assert catch_up.accept(message("general", None))
    assert catch_up.accept(message("general", None))
    assert catch_up.missed("general") == MissedMessages("general", 4)
    assert catch_up.after("general") == 4  # unchanged by messages without q


def test_history_markers_frame_a_replay() -> None:
    catch_up = CatchUp(history_markers=True)
    assert catch_up.replay(history("general", [1], 1)) == [
        HistoryStart("general", catch_up=False),
        message("general", 1),
        HistoryEnd("general"),
    ]
    assert catch_up.replay(history("general", [3], 3, gap=True)) == [
        HistoryStart("general", catch_up=True),
        MissedMessages("general", 1),
        message("general", 3),
        HistoryEnd("general"),
    ]
    assert catch_up.replay(history("other", [], 0)) == [
        HistoryStart("other", catch_up=False),
        HistoryEnd("other"),
    ]

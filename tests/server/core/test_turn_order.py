"""A room keeps a turn's events and hands them to its members at the turn's end (rooms.py,
outbox.py): whatever happens during the turn, each session gets each room's events in the
room's order, from its join on, with nothing lost, repeated or overtaken.

The random runs of tests/server/core/test_stats.py (v1 and v2 sessions joining, leaving and posting
in turns of several steps, joins answered late, runs big enough to be written before the
turn ends, sessions lost or cut off), checked session by session from what was written:

- v2: after a join's ``history`` (the room's latest ``q``), every ``user_message`` of the
  room carries the next ``q``, with no gap, until the session joins it again;
- v1 and v2: no room event before the ``user_joined_room`` of its room, and the joiner's
  own ``joined`` (when its user was not in the room yet) comes before any message.
"""

from __future__ import annotations

import json

import pytest

from tests.random_runs import Run
from tests.session_harness import LatePresence


def check_session(lines: list[bytes], v2: bool) -> int:
    """Check one session's output (see the module docstring); the room events seen."""
    expected_q: dict[str, int] = {}  # v2: room -> the next message's q
    joined: set[str] = set()  # rooms whose user_joined_room came
    seen = 0
    for line in lines:
        event = json.loads(line)
        kind, room = event["_et"], event.get("r")
        if kind == "user_joined_room":
            joined.add(room)
            expected_q.pop(room, None)  # a new membership: its history says where it starts
        elif kind == "history":
            assert room in joined, line
            expected_q[room] = event["q"] + 1
        elif kind in ("user_message", "room_participation"):
            seen += 1
            assert room in joined, f"an event of {room} before its user_joined_room: {line!r}"
            if kind == "user_message" and v2:
                assert room in expected_q, f"a message before the history: {line!r}"
                assert event["q"] == expected_q[room], (room, event["q"], expected_q[room])
                expected_q[room] += 1
    return seen


@pytest.mark.parametrize("late", [False, True], ids=["memory-presence", "late-joins"])
@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_each_room_in_order_from_the_join_on(seed: int, late: bool) -> None:
    run = Run(LatePresence() if late else None)
    run.play(seed, 800, cut_off=True)
    seen = 0
    for session, output in zip(run.sessions, run.output, strict=True):
        lines = [line + b"\n" for line in b"".join(output).split(b"\n")[:-1]]
        seen += check_session(lines, session.v2)
    assert seen > 500  # the runs carried plenty of room events

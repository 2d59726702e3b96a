"""The counters behind /metrics (server/core/stats.py) are exact, though nothing is counted per
delivery or per write: deliveries, messages and bytes out are worked out from the rooms'
sequence numbers and fanned-out bytes when their members change, writes per room per turn.

Random runs of sessions (v1 and v2) joining, leaving, posting runs of messages big enough
to be written before the end of the turn, several commands in one turn, joins answered
late (events held back for the joiner), sessions quitting, lost or cut off as slow
consumers; the counters are checked against what the sessions were fed and written.
"""

from __future__ import annotations

import pytest

from tests.random_runs import Run
from tests.session_harness import LatePresence


@pytest.mark.parametrize("late", [False, True], ids=["memory-presence", "late-joins"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counters_are_exact(seed: int, late: bool) -> None:
    run = Run(LatePresence() if late else None)
    run.play(seed, 800, cut_off=False)
    stats = run.stats
    assert run.writes > 100 and run.room_events > 500
    assert stats.bytes_in == run.fed
    assert stats.bytes_out == run.written
    assert stats.writes == run.writes
    assert stats.deliveries == run.room_events  # nothing was dropped
    assert stats.messages_received == run.sends


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_bytes_dropped_by_lost_and_slow_sessions_are_not_counted_as_sent(seed: int) -> None:
    run = Run(LatePresence())
    run.play(seed, 800, cut_off=True)
    assert sum(session.closed for session in run.sessions) > 20
    assert run.stats.bytes_out == run.written
    assert run.stats.writes == run.writes
    assert run.stats.bytes_in == run.fed

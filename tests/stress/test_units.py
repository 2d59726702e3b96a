"""The stress tool's pure parts: configuration, stamps, sent logs, limits, order checks."""

from __future__ import annotations

import resource

import pytest

from roomchat.protocol import SendMessage, UserJoinedRoom, UserMessage, encode
from roomchat.stress.config import LoadStep, RampConfig, SteadyConfig, parse_steps, rooms_of_user
from roomchat.stress.limits import raise_open_files
from roomchat.stress.stamp import MEASURED, WARMUP, line_head, make_line, parse_stamp
from roomchat.stress.stats import SentLog, Tally, merge_histograms, new_histogram
from roomchat.stress.worker import LoadWorker


def test_parse_steps_reads_the_originals_ramp() -> None:
    assert parse_steps("1200/60/60,2400/120/120") == (
        LoadStep(1200, 60.0, 60),
        LoadStep(2400, 120.0, 120),
    )


@pytest.mark.parametrize("text", ["", "10/1", "10/1/0", "10/-1/1", "10/1/1,5/1/1", "a/b/c"])
def test_parse_steps_rejects_bad_increments(text: str) -> None:
    with pytest.raises(ValueError):
        parse_steps(text)


def test_ramp_start_times_add_users_in_equal_steps() -> None:
    cfg = RampConfig(steps=parse_steps("4/2/2,6/1/1"))
    assert cfg.users == 6
    assert cfg.duration == 3.0
    assert cfg.start_times() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def test_rooms_are_assigned_round_robin() -> None:
    assert rooms_of_user(0, 24, 5) == [0, 1, 2, 3, 4]
    assert rooms_of_user(5, 24, 5) == [1, 2, 3, 4, 5]
    assert [rooms_of_user(u, 24, 1)[0] for u in range(48)] == list(range(24)) * 2


def test_config_rejects_more_rooms_per_user_than_rooms() -> None:
    with pytest.raises(ValueError):
        SteadyConfig(rooms=2, rooms_per_user=3)


@pytest.mark.parametrize("room", ["general", 'quo"te', "héllo"])
def test_pre_encoded_line_is_the_codecs_send_message(room: str) -> None:
    line = make_line(line_head(room), 7, 3, 123456789, MEASURED, 40)
    content = f"7 3 75bcd15 {MEASURED}|".ljust(40, "x")
    assert line == encode(SendMessage(room, content))


def test_stamp_round_trips_and_pads_to_the_payload() -> None:
    line = make_line(line_head("r"), 0x1234, 99, 10**18, WARMUP, 100)
    content = line.split(b'"c":"')[1][: -len(b'"}\r\n')].decode()
    assert len(content) == 100
    stamp = parse_stamp(content)
    assert stamp is not None
    assert (stamp.sender, stamp.seq, stamp.sent, stamp.measured) == (0x1234, 99, 10**18, False)


@pytest.mark.parametrize("content", ["", "hello", "1 2", "x y z m|", "1 2 3"])
def test_foreign_content_has_no_stamp(content: str) -> None:
    assert parse_stamp(content) is None


def test_sent_log_expects_only_messages_after_joining() -> None:
    a = SentLog([2, 1], [[10, 30], [20]])
    b = SentLog([1, 0], [[20], []])
    merged = SentLog.merge([a, b])
    assert merged.counts == [3, 1]
    assert merged.stamps == [[10, 20, 30], [20]]
    assert merged.expected_since(0, 15) == 2
    assert merged.expected_since(0, 0) == 3
    assert SentLog.merge([SentLog([4, 5]), SentLog([1, 1])]).expected_since(1, 99) == 6


def test_tallies_and_histograms_add_up() -> None:
    total = Tally(sent=1, max_send_lag_us=5)
    total.add(Tally(sent=2, delivered=3, max_send_lag_us=2))
    assert (total.sent, total.delivered, total.max_send_lag_us) == (3, 3, 5)
    one, two = new_histogram(), new_histogram()
    one.record_value(100, 3)
    two.record_value(1000)
    merged = merge_histograms([one.encode(), two.encode(), ""])
    assert merged.get_total_count() == 4


def test_open_files_limit_suffices_for_a_few_sessions() -> None:
    assert raise_open_files(10) is None
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 10


def test_open_files_limit_is_raised_up_to_the_hard_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 20_000))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
    assert raise_open_files(10_000) is None
    assert calls == [(10_064, 20_000)]


def test_open_files_shortfall_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    message = raise_open_files(10_000)
    assert message is not None
    assert "cannot be raised" in message
    assert "1024" in message


async def test_receiver_counts_duplicates_gaps_and_late_arrivals() -> None:
    worker = LoadWorker(SteadyConfig(rooms=2, rooms_per_user=1), [0])
    worker._use_rooms(["a", "b"])
    user = worker._users[0]
    receive = worker._receiver(user)
    receive(UserJoinedRoom("a", ("me",)))

    def message(seq: int, phase: str = MEASURED) -> UserMessage:
        head = line_head("a")
        line = make_line(head, 5, seq, user.joined_at[0] + 1, phase, 0)
        return UserMessage("a", "them", line[len(head) : -4].decode())

    for seq in (0, 1, 3, 1, 2, 4):
        receive(message(seq))
    receive(message(5, WARMUP))
    receive(UserMessage("b", "them", "not joined"))
    receive(UserMessage("a", "them", "no stamp"))
    tally = worker.tally
    assert (tally.delivered, tally.duplicated, tally.out_of_order) == (5, 1, 1)
    assert (tally.delivered_all, tally.unexpected) == (9, 2)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
async def test_counter_counts_the_same_however_the_bytes_are_split(chunk: int) -> None:
    worker = LoadWorker(SteadyConfig(rooms=2, rooms_per_user=2, check_every=2), [1])
    worker._use_rooms(["a", "b"])
    user = worker._users[0]
    assert not worker.cfg.checks(user.index)  # type: ignore[union-attr]
    count = worker._counter(user)
    stream = encode(UserJoinedRoom("a", ("me",))) + encode(UserJoinedRoom("b", ("me",)))
    for seq in range(5):
        for phase in (WARMUP, MEASURED, MEASURED):
            line = make_line(line_head("a"), 0, seq, 1, phase, 30)
            content = line[len(line_head("a")) : -4].decode()
            stream += encode(UserMessage("a", "them", content))
    for start in range(0, len(stream), chunk):
        count(stream[start : start + chunk])
    tally = worker.tally
    assert (tally.delivered_all, tally.delivered, user.counted) == (15, 10, 10)
    assert tally.joined == 2 and set(user.joined_at) == {0, 1}


async def test_counter_surplus_is_reported_as_duplicated() -> None:
    worker = LoadWorker(SteadyConfig(rooms=1, rooms_per_user=1, check_every=2), [1])
    worker._use_rooms(["a"])
    user = worker._users[0]
    count = worker._counter(user)
    count(encode(UserJoinedRoom("a", ("me",))))
    line = make_line(line_head("a"), 0, 0, 1, MEASURED, 0)
    message = encode(UserMessage("a", "them", line[len(line_head("a")) : -4].decode()))
    count(message * 3)
    log = SentLog.empty(1, False)
    log.counts[0] = 2  # two were sent: the third copy is a duplicate
    worker.cfg = SteadyConfig(rooms=1, rooms_per_user=1, check_every=2, drain_timeout=0)
    await worker.drain(log)
    assert (worker.tally.delivered, worker.tally.duplicated) == (2, 1)

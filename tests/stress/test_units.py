"""The stress tool's pure parts: configuration, stamps, sent logs, order checks, joins."""

from __future__ import annotations

import time

import pytest

from roomchat.protocol import (
    Error,
    History,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from roomchat.stress.config import LoadStep, RampConfig, SteadyConfig, parse_steps, rooms_of_user
from roomchat.stress.report import build_report
from roomchat.stress.stamp import MEASURED, WARMUP, line_head, make_line, parse_stamp
from roomchat.stress.stats import SentLog, Tally, WorkerResult, merge_histograms, new_histogram
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


def test_connect_rate_spreads_arrivals_evenly() -> None:
    cfg = SteadyConfig(users=5, connect_rate=100)
    assert cfg.start_times() == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    assert SteadyConfig(users=5).start_times() is None  # batches
    with pytest.raises(ValueError):
        SteadyConfig(connect_rate=-1)
    with pytest.raises(ValueError):
        SteadyConfig(join_bound=0)


def test_the_modes_answer_the_same_questions_differently() -> None:
    steady = SteadyConfig(users=4, rate=2, check_every=2, warmup=1, duration=3)
    ramp = RampConfig(steps=parse_steps("4/2/2"), delay=5)
    assert (steady.mode, ramp.mode) == ("steady", "ramp")
    assert (steady.message_rate, steady.send_interval) == (2, 0.5)
    assert (ramp.message_rate, ramp.send_interval) == (0.2, 5)
    assert [steady.checks(u) for u in range(4)] == [True, False, True, False]
    assert all(ramp.checks(u) for u in range(4))
    assert (steady.logs_stamps, ramp.logs_stamps) == (False, True)
    assert (steady.arrives_while_sending, ramp.arrives_while_sending) == (False, True)
    assert steady.first_send_delay(3) is None
    delays = [ramp.first_send_delay(u) for u in range(4)]
    assert all(d is not None and 0 <= d < 5 for d in delays) and len(set(delays)) == 4
    assert (steady.load_seconds(), ramp.load_seconds()) == (4, 2 + ramp.connect_timeout)
    assert ramp.connect_seconds(4) == 0
    batches = steady.connect_seconds(4)
    arriving = SteadyConfig(users=4, connect_rate=0.5).connect_seconds(4)
    assert arriving == pytest.approx(batches + 8)  # 4 users at 0.5/s arrive over 8 s


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


@pytest.mark.parametrize(("phase", "measured"), [(WARMUP, False), (MEASURED, True)])
def test_stamp_round_trips_and_pads_to_the_payload(phase: str, measured: bool) -> None:
    line = make_line(line_head("r"), 0x1234, 99, 10**18, phase, 100)
    content = line.split(b'"c":"')[1][: -len(b'"}\r\n')].decode()
    assert len(content) == 100
    assert parse_stamp(content) == (0x1234, 99, 10**18, measured)


@pytest.mark.parametrize("content", ["", "hello", "1 2", "x y z m|", "1 2 3", "1 2 zz m|"])
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


@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 7, 64, 10_000])
async def test_counter_counts_the_same_however_the_bytes_are_split(chunk: int) -> None:
    worker = LoadWorker(SteadyConfig(rooms=2, rooms_per_user=2, check_every=2), [1])
    worker._use_rooms(["a", "b"])
    user = worker._users[0]
    assert not worker.cfg.checks(user.index)
    count = worker._counter(user)
    stream = encode(UserJoinedRoom("a", ("me",))) + encode(UserJoinedRoom("b", ("me",)))
    stream += encode(RoomParticipation("a", "them", "joined")) * 3
    for seq in range(5):
        for phase in (WARMUP, MEASURED, MEASURED):
            line = make_line(line_head("a"), 0, seq, 1, phase, 30)
            content = line[len(line_head("a")) : -4].decode()
            stream += encode(UserMessage("a", "them", content))
    if chunk:
        reads = [stream[start : start + chunk] for start in range(0, len(stream), chunk)]
    else:  # whole lines, a few at a time: the counter's fast path, without a tail
        lines = stream.splitlines(keepends=True)
        reads = [b"".join(lines[start : start + 3]) for start in range(0, len(lines), 3)]
    for read in reads:
        count(read)
    tally = worker.tally
    assert (tally.delivered_all, tally.delivered, user.counted) == (15, 10, 10)
    assert tally.joined == 2 and set(user.joined_at) == {0, 1}
    assert tally.join_events == 5  # its two joins, three others'


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


async def test_join_time_is_counted_per_user_from_its_connecting() -> None:
    worker = LoadWorker(SteadyConfig(rooms=3, rooms_per_user=2, join_bound=0.5), [0, 1])
    worker._use_rooms(["a", "b", "c"])
    first, second = worker._users
    now = time.monotonic_ns()
    first.connect_ns = now - 2 * 10**9  # started connecting 2 s ago: late
    second.connect_ns = now
    receive = [worker._receiver(user) for user in worker._users]
    receive[0](UserJoinedRoom("a", ("me",)))
    assert worker.tally.users_joined == 0  # one room of two
    receive[0](UserJoinedRoom("b", ("me",)))
    receive[1](UserJoinedRoom("b", ("me",)))
    receive[1](UserJoinedRoom("b", ("me",)))  # a repeat does not count twice
    receive[1](UserJoinedRoom("a", ("me",)))  # not one of its rooms
    tally = worker.tally
    assert (tally.joined, tally.users_joined, tally.users_joined_late) == (3, 1, 1)
    receive[1](UserJoinedRoom("c", ("me",)))
    assert (tally.joined, tally.users_joined, tally.users_joined_late) == (4, 2, 1)
    assert tally.last_join_ns >= now
    times = merge_histograms([worker._join_histogram.encode()])
    assert times.get_total_count() == 2
    assert times.get_max_value() >= 2_000_000  # µs


def _joined_result(users: int, late: int, join_us: list[int]) -> WorkerResult:
    joins = new_histogram()
    for us in join_us:
        joins.record_value(us)
    tally = Tally(
        users=users,
        connected=users,
        joined=users,
        users_joined=len(join_us),
        users_joined_late=late,
        first_connect_ns=10**9,
        last_join_ns=3 * 10**9,
    )
    return WorkerResult(tally, 0, "", True, ["a"], joins.encode(), joins.encode())


@pytest.mark.parametrize(
    ("results", "kept_up"),
    [
        ([_joined_result(2, 0, [1000, 2000]), _joined_result(1, 0, [3000])], True),
        ([_joined_result(2, 0, [1000, 2000]), _joined_result(1, 1, [3000])], False),  # late
        ([_joined_result(2, 0, [1000, 2000]), _joined_result(1, 0, [])], False),  # not joined
    ],
)
def test_report_says_whether_joining_kept_up(results: list[WorkerResult], kept_up: bool) -> None:
    cfg = SteadyConfig(users=3, rooms=1, rooms_per_user=1, connect_rate=10)
    report = build_report(cfg, results, [], 0)
    assert report.joins_kept_up is kept_up
    assert report.users_joined == sum(r.tally.users_joined for r in results)
    assert report.join_s == 2.0  # first connect at 1 s, last join at 3 s
    assert (report.join_start_ns, report.join_end_ns) == (10**9, 3 * 10**9)
    assert report.join_time_ms.samples == report.users_joined
    assert report.connect_rate == 10
    assert any("did not keep up" in note for note in report.notes) is bool(
        sum(r.tally.users_joined_late for r in results)
    )


def test_first_connect_is_the_earliest_of_the_workers() -> None:
    total = Tally()
    for first in (0, 30, 20, 0):  # 0: that worker connected nobody
        total.add(Tally(first_connect_ns=first, last_join_ns=first + 5))
    assert (total.first_connect_ns, total.last_join_ns) == (20, 35)


@pytest.mark.parametrize("chunk", [0, 1, 2, 5, 13, 64, 10_000])
async def test_counter_reads_v2_lines_and_counts_errors_by_code(chunk: int) -> None:
    worker = LoadWorker(SteadyConfig(rooms=1, rooms_per_user=1, check_every=2, v2=True), [1])
    worker._use_rooms(["a"])
    user = worker._users[0]
    count = worker._counter(user)
    stream = encode(UserJoinedRoom("a", ("me",)))
    stream += encode(History("a", (), 0, False))
    stream += encode(RoomParticipation("a", "me", "joined", 1764355200123))
    errors = [("rate_limited", "slow"), ("not_member", "x"), ("rate_limited", '"quoted"')]
    for seq in range(6):
        line = make_line(line_head("a"), 0, seq, 1, MEASURED, 30)
        content = line[len(line_head("a")) : -4].decode()
        stream += encode(UserMessage("a", "them", content, seq + 1, 1764355200000 + seq))
        if seq % 2:
            code, msg = errors[seq // 2]
            stream += encode(Error(code, msg, "send_message", str(seq)))
    assert b',"q":6,"ts":1764355200005}' in stream
    if chunk:
        reads = [stream[start : start + chunk] for start in range(0, len(stream), chunk)]
    else:
        reads = stream.splitlines(keepends=True)
    for read in reads:
        count(read)
    tally = worker.tally
    assert (tally.delivered_all, tally.delivered, user.counted) == (6, 6, 6)
    assert tally.errors_by_code == {"rate_limited": 2, "not_member": 1}
    assert tally.joined == 1

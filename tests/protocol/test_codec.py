"""The protocol v1 codec: bytes in, messages out, synchronous (no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from roomchat.protocol import (
    BadLine,
    Command,
    CommandDecoder,
    Event,
    EventDecoder,
    JoinRoom,
    LeaveRoom,
    LineDecoder,
    LineTooLong,
    LoginSuccessful,
    Message,
    Quit,
    RoomDetail,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
    encode,
    encode_head,
    encode_messages,
    encode_user,
    encode_user_joined_room,
    encode_users,
)
from roomchat.protocol.codec import lines_within

Result = Message | BadLine | LineTooLong
AnyDecoder = LineDecoder[Command] | LineDecoder[Event]

# --- golden vectors (docs/protocol.md, "Exact bytes") -----------------------------------

GOLDEN: list[tuple[bytes, Message]] = [
    (b'{"_ct":"join_room","r":"test"}', JoinRoom("test")),
    (b'{"_ct":"leave_room","r":"test"}', LeaveRoom("test")),
    (b'{"_ct":"send_message","r":"test","c":"test"}', SendMessage("test", "test")),
    (b'{"_ct":"quit"}', Quit()),
    (
        b'{"_et":"login_successful","s":"session-id-1","u":"user-id-1",'
        b'"rs":[{"n":"room-1","d":"some description"}]}',
        LoginSuccessful("session-id-1", "user-id-1", (RoomDetail("room-1", "some description"),)),
    ),
    (
        b'{"_et":"room_participation","r":"test","u":"test","s":"joined"}',
        RoomParticipation("test", "test", "joined"),
    ),
    (
        b'{"_et":"room_participation","r":"test","u":"test","s":"left"}',
        RoomParticipation("test", "test", "left"),
    ),
    (b'{"_et":"user_joined_room","r":"test","us":["test"]}', UserJoinedRoom("test", ("test",))),
    (
        b'{"_et":"user_message","r":"test","u":"test","c":"test"}',
        UserMessage("test", "test", "test"),
    ),
    (
        '{"_et":"user_message","r":"test","u":"test","c":"héllo 👋"}'.encode(),
        UserMessage("test", "test", "héllo 👋"),
    ),
]
GOLDEN_IDS = [golden.decode()[:40] for golden, _ in GOLDEN]


def decoder_for(line: bytes, max_line_length: int | None = None) -> AnyDecoder:
    """CommandDecoder for ``_ct`` lines, EventDecoder for ``_et`` lines."""
    cls = CommandDecoder if line.startswith(b'{"_ct"') else EventDecoder
    return cls() if max_line_length is None else cls(max_line_length)


def feed_whole(decoder: AnyDecoder, data: bytes) -> list[Result]:
    return [*decoder.feed(data), *decoder.feed_eof()]


def feed_bytewise(decoder: AnyDecoder, data: bytes) -> list[Result]:
    """h11 style: re-feed the input one byte at a time."""
    out: list[Result] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    out += decoder.feed_eof()
    return out


def feed_chunks(decoder: AnyDecoder, data: bytes, cuts: Sequence[int]) -> list[Result]:
    """Feed ``data`` split at the given offsets (any order, duplicates allowed)."""
    out: list[Result] = []
    start = 0
    for cut in sorted({min(max(c, 0), len(data)) for c in cuts}):
        out += decoder.feed(data[start:cut])
        start = cut
    out += decoder.feed(data[start:])
    out += decoder.feed_eof()
    return out


Feeder = Callable[[AnyDecoder, bytes], list[Result]]
FEEDERS: list[Feeder] = [feed_whole, feed_bytewise]


def decode_all(data: bytes, make: Callable[[], AnyDecoder] = CommandDecoder) -> list[list[Result]]:
    """The results of ``data`` fed whole and fed byte by byte."""
    return [feeder(make(), data) for feeder in FEEDERS]


# --- golden vectors both ways -------------------------------------------------------


@pytest.mark.parametrize(("golden", "message"), GOLDEN, ids=GOLDEN_IDS)
def test_encode_matches_golden(golden: bytes, message: Message) -> None:
    assert encode(message) == golden + b"\r\n"


@pytest.mark.parametrize(("golden", "message"), GOLDEN, ids=GOLDEN_IDS)
@pytest.mark.parametrize("ending", [b"\r\n", b"\n"], ids=["crlf", "lf"])
@pytest.mark.parametrize("feeder", FEEDERS, ids=["whole", "bytewise"])
def test_decode_golden(golden: bytes, message: Message, ending: bytes, feeder: Feeder) -> None:
    decoder = decoder_for(golden)
    out = feeder(decoder, golden + ending)
    assert out == [message]
    assert type(out[0]) is type(message)
    assert decoder.buffered == 0


@pytest.mark.parametrize(("golden", "message"), GOLDEN, ids=GOLDEN_IDS)
def test_decode_golden_completes_on_newline_without_eof(golden: bytes, message: Message) -> None:
    decoder = decoder_for(golden)
    assert decoder.feed(golden + b"\r") == []
    assert decoder.feed(b"\n") == [message]


def test_non_ascii_travels_as_raw_utf8() -> None:
    line = encode(UserMessage("test", "test", "héllo 👋"))
    assert "héllo 👋".encode() in line
    assert b"\\u" not in line
    assert line.decode("utf-8") == '{"_et":"user_message","r":"test","u":"test","c":"héllo 👋"}\r\n'


ALL_GOLDEN_COMMANDS = b"".join(g + b"\r\n" for g, m in GOLDEN if g.startswith(b'{"_ct"'))
ALL_GOLDEN_EVENTS = b"".join(g + b"\n" for g, m in GOLDEN if g.startswith(b'{"_et"'))


@pytest.mark.parametrize(
    "cuts",
    [
        [],
        [0],
        [1],
        [5],
        [30],
        [31],
        [32],
        [30, 31, 32],
        [10, 20, 40, 60, 80, 100],
        list(range(0, 200, 7)),
        list(range(0, 200, 3)),
        [len(ALL_GOLDEN_COMMANDS) - 1],
    ],
)
def test_split_anywhere_commands(cuts: list[int]) -> None:
    expected = [m for g, m in GOLDEN if g.startswith(b'{"_ct"')]
    assert feed_chunks(CommandDecoder(), ALL_GOLDEN_COMMANDS, cuts) == expected


@pytest.mark.parametrize(
    "cuts",
    [[], [1], [2], [50], [100, 101], list(range(0, 600, 11)), list(range(0, 600, 2))],
)
def test_split_anywhere_events(cuts: list[int]) -> None:
    expected = [m for g, m in GOLDEN if g.startswith(b'{"_et"')]
    assert feed_chunks(EventDecoder(), ALL_GOLDEN_EVENTS, cuts) == expected


def test_every_two_way_split_of_commands() -> None:
    expected = [m for g, m in GOLDEN if g.startswith(b'{"_ct"')]
    for cut in range(len(ALL_GOLDEN_COMMANDS) + 1):
        assert feed_chunks(CommandDecoder(), ALL_GOLDEN_COMMANDS, [cut]) == expected, cut


# --- framing ------------------------------------------------------------------------


def test_blank_lines_skipped() -> None:
    data = b'\n\r\n  \r\n{"_ct":"quit"}\r\n\n\n\t\n{"_ct":"join_room","r":"a"}\n\r\n'
    for out in decode_all(data):
        assert out == [Quit(), JoinRoom("a")]


def test_crlf_and_lf_mixed() -> None:
    data = (
        b'{"_ct":"join_room","r":"a"}\r\n{"_ct":"leave_room","r":"a"}\n'
        b'{"_ct":"quit"}\r\n{"_ct":"send_message","r":"a","c":"b"}\n'
    )
    for out in decode_all(data):
        assert out == [JoinRoom("a"), LeaveRoom("a"), Quit(), SendMessage("a", "b")]


@pytest.mark.parametrize("tail", [b'{"_ct":"quit"}', b'{"_ct":"quit"}\r'])
def test_unterminated_final_line_held_until_eof(tail: bytes) -> None:
    decoder = CommandDecoder()
    assert decoder.feed(b'{"_ct":"join_room","r":"a"}\r\n' + tail) == [JoinRoom("a")]
    assert decoder.buffered == len(tail)
    assert decoder.feed(b"") == []
    assert decoder.feed_eof() == [Quit()]
    assert decoder.buffered == 0
    assert decoder.feed_eof() == []


def test_unterminated_final_line_bytewise() -> None:
    decoder = CommandDecoder()
    out: list[Result] = []
    for byte in b'{"_ct":"quit"}':
        out += decoder.feed(bytes([byte]))
    assert out == []
    assert decoder.feed_eof() == [Quit()]


def test_eof_with_nothing_buffered() -> None:
    assert CommandDecoder().feed_eof() == []
    assert EventDecoder().feed_eof() == []


def test_decoder_rejects_non_positive_limit() -> None:
    with pytest.raises(ValueError):
        CommandDecoder(0)
    with pytest.raises(ValueError):
        EventDecoder(-1)


# --- bad lines ----------------------------------------------------------------------

BAD_COMMAND_LINES: list[bytes] = [
    b"{not json",
    b'{"_ct":"join_room","r":"a"',
    b"hello",
    b'{"_ct":"dance","r":"a"}',
    b'{"r":"a"}',
    b'{"_ct":"join_room"}',
    b'{"_ct":"send_message","r":"a"}',
    b'{"_ct":"join_room","r":1}',
    b'{"_ct":"send_message","r":"a","c":null}',
    b'{"_ct":7}',
    b'{"_ct":"join_room","r":"\xff"}',
    b"\xff\xfe\xfd",
    b'{"_ct":"join_room","r":"\xed\xa0\x80"}',
    b'[{"_ct":"quit"}]',
    b"[]",
    b'"quit"',
    b"42",
    b"null",
    b'{"_et":"user_message","r":"test","u":"test","c":"test"}',
]


@pytest.mark.parametrize("bad", BAD_COMMAND_LINES, ids=repr)
@pytest.mark.parametrize("ending", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_bad_command_line_then_decoding_continues(bad: bytes, ending: bytes) -> None:
    data = b'{"_ct":"join_room","r":"x"}' + ending + bad + ending + b'{"_ct":"quit"}' + ending
    for out in decode_all(data):
        assert len(out) == 3, out
        assert out[0] == JoinRoom("x")
        assert isinstance(out[1], BadLine)
        assert out[1].line == bad
        assert out[1].reason
        assert out[2] == Quit()


BAD_EVENT_LINES: list[bytes] = [
    b'{"_ct":"join_room","r":"test"}',
    b'{"_ct":"quit"}',
    b'{"_et":"room_participation","r":"test","u":"test","s":"maybe"}',
    b'{"_et":"user_joined_room","r":"test","us":"test"}',
    b'{"_et":"login_successful","s":"a","u":"b","rs":[{"n":"x"}]}',
    b'{"_et":"nope"}',
    b"[1,2,3]",
]


@pytest.mark.parametrize("bad", BAD_EVENT_LINES, ids=repr)
def test_bad_event_line_then_decoding_continues(bad: bytes) -> None:
    good = b'{"_et":"user_joined_room","r":"test","us":["test"]}'
    data = bad + b"\r\n" + good + b"\r\n"
    for out in decode_all(data, EventDecoder):
        assert len(out) == 2, out
        assert isinstance(out[0], BadLine)
        assert out[0].line == bad
        assert out[1] == UserJoinedRoom("test", ("test",))


def test_bad_unterminated_final_line_at_eof() -> None:
    decoder = CommandDecoder()
    assert decoder.feed(b"{oops") == []
    out = decoder.feed_eof()
    assert len(out) == 1
    assert isinstance(out[0], BadLine)
    assert out[0].line == b"{oops"


@pytest.mark.parametrize("depth", [2000, 5000])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_deeply_nested_line_is_a_bad_line(depth: int, opener: bytes) -> None:
    # Well within the default 64 KiB limit: the decoder must give a BadLine, not raise.
    bad = b'{"_ct":"quit","x":' + opener * depth
    data = bad + b"\r\n" + b'{"_ct":"join_room","r":"a"}\r\n'
    decoder = CommandDecoder()
    assert len(bad) <= decoder.max_line_length
    out = decoder.feed(data)
    assert len(out) == 2, out
    assert isinstance(out[0], BadLine)
    assert out[1] == JoinRoom("a")


# --- max line length ----------------------------------------------------------------


def line_of_length(length: int) -> tuple[bytes, JoinRoom]:
    """A valid join_room line (without terminator) of exactly ``length`` bytes."""
    overhead = len(b'{"_ct":"join_room","r":""}')
    message = JoinRoom("x" * (length - overhead))
    line = encode(message)[:-2]
    assert len(line) == length
    return line, message


LIMIT = 64
AFTER = b'{"_ct":"quit"}'


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"], ids=["crlf", "lf"])
@pytest.mark.parametrize("feeder", FEEDERS, ids=["whole", "bytewise"])
def test_line_of_exactly_the_limit_decodes(ending: bytes, feeder: Feeder) -> None:
    line, message = line_of_length(LIMIT)
    decoder = CommandDecoder(LIMIT)
    assert feeder(decoder, line + ending + AFTER + ending) == [message, Quit()]


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"], ids=["crlf", "lf"])
@pytest.mark.parametrize("feeder", FEEDERS, ids=["whole", "bytewise"])
@pytest.mark.parametrize("extra", [1, 2, 10, 1000])
def test_line_over_the_limit_is_one_line_too_long(
    ending: bytes, feeder: Feeder, extra: int
) -> None:
    line, _ = line_of_length(LIMIT + extra)
    decoder = CommandDecoder(LIMIT)
    out = feeder(decoder, line + ending + AFTER + ending)
    assert out == [LineTooLong(LIMIT), Quit()]


def test_line_too_long_at_eof_without_terminator() -> None:
    line, _ = line_of_length(LIMIT + 1)
    for out in decode_all(AFTER + b"\n" + line, lambda: CommandDecoder(LIMIT)):
        assert out == [Quit(), LineTooLong(LIMIT)]


def test_line_too_long_split_then_more_lines_same_chunk() -> None:
    line, _ = line_of_length(LIMIT + 50)
    decoder = CommandDecoder(LIMIT)
    assert decoder.feed(line[:30]) == []
    assert decoder.feed(line[30:]) == [LineTooLong(LIMIT)]
    assert decoder.feed(b"\r\n" + AFTER + b"\r\n" + AFTER + b"\n") == [Quit(), Quit()]
    assert decoder.feed_eof() == []


@pytest.mark.parametrize("chunk", [1, 7, LIMIT, LIMIT + 1, 500])
def test_too_long_line_memory_bounded(chunk: int) -> None:
    decoder = CommandDecoder(LIMIT)
    out: list[Result] = []
    for _ in range(20 * LIMIT // chunk + 5):
        out += decoder.feed(b"y" * chunk)
        assert decoder.buffered <= LIMIT + 1
    assert out == [LineTooLong(LIMIT)]
    assert decoder.feed(b"yyy\r\n" + AFTER + b"\r\n") == [Quit()]
    assert decoder.buffered == 0


def test_exact_limit_crlf_bytewise_buffers_at_most_limit_plus_one() -> None:
    line, message = line_of_length(LIMIT)
    decoder = CommandDecoder(LIMIT)
    out: list[Result] = []
    for byte in line + b"\r":
        out += decoder.feed(bytes([byte]))
        assert decoder.buffered <= LIMIT + 1
    assert out == []
    assert decoder.feed(b"\n") == [message]


def test_default_limit_line() -> None:
    decoder = CommandDecoder()
    line, message = line_of_length(decoder.max_line_length)
    assert decoder.feed(line + b"\r\n") == [message]
    too_long, _ = line_of_length(decoder.max_line_length + 1)
    assert decoder.feed(too_long + b"\r\n" + AFTER + b"\r\n") == [
        LineTooLong(decoder.max_line_length),
        Quit(),
    ]


# --- property tests -----------------------------------------------------------------

texts = st.text()
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(JoinRoom, texts),
    st.builds(LeaveRoom, texts),
    st.builds(SendMessage, texts, texts),
    st.just(Quit()),
)
room_details = st.builds(RoomDetail, texts, texts)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(LoginSuccessful, texts, texts, st.lists(room_details, max_size=8).map(tuple)),
    st.builds(UserJoinedRoom, texts, st.lists(texts, max_size=8).map(tuple)),
    st.builds(RoomParticipation, texts, texts, st.sampled_from(["joined", "left"])),
    st.builds(UserMessage, texts, texts, texts),
)


@settings(max_examples=300)
@given(st.lists(commands, max_size=10), st.data())
def test_commands_round_trip_any_chunking(messages: list[Command], data: st.DataObject) -> None:
    wire = b"".join(encode(m) for m in messages)
    for m in messages:
        assert encode(m).count(b"\n") == 1
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    assert feed_chunks(CommandDecoder(), wire, cuts) == messages
    assert feed_bytewise(CommandDecoder(), wire) == messages


@settings(max_examples=300)
@given(st.lists(events, max_size=10), st.data())
def test_events_round_trip_any_chunking(messages: list[Event], data: st.DataObject) -> None:
    wire = b"".join(encode(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    assert feed_chunks(EventDecoder(), wire, cuts) == messages
    assert feed_bytewise(EventDecoder(), wire) == messages


@settings(max_examples=200)
@given(commands)
def test_commands_round_trip_with_lf_only(message: Command) -> None:
    wire = encode(message)[:-2] + b"\n"
    assert feed_whole(CommandDecoder(), wire) == [message]


def _check_results(out: list[Result], kind: tuple[type, ...]) -> None:
    for item in out:
        assert isinstance(item, (*kind, BadLine, LineTooLong)), item


JUNK_PIECES = [
    *(b"\n", b"\r", b"\r\n", b"{", b"}", b"[", b'"', b"\\", b":", b",", b" "),
    *(b'"_ct"', b'"_et"', b'"join_room"', b'"quit"', b'"r"', b"\xff", b"\xc3", b"\xe2\x82"),
]
junk = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(JUNK_PIECES),
        max_size=80,
    ).map(b"".join),
)


@settings(max_examples=500)
@given(junk, st.data(), st.integers(1, 40))
def test_arbitrary_bytes_never_raise(blob: bytes, data: st.DataObject, limit: int) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=20))
    for decoder, kind in (
        (CommandDecoder(), (JoinRoom, LeaveRoom, SendMessage, Quit)),
        (EventDecoder(limit), (LoginSuccessful, UserJoinedRoom, RoomParticipation, UserMessage)),
    ):
        out = feed_chunks(decoder, blob, cuts)
        _check_results(out, kind)
        assert decoder.buffered == 0


@settings(max_examples=300)
@given(junk, st.data(), st.integers(1, 40))
def test_arbitrary_chunking_gives_same_results(
    blob: bytes, data: st.DataObject, limit: int
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=20))
    whole = feed_whole(CommandDecoder(limit), blob)
    assert feed_chunks(CommandDecoder(limit), blob, cuts) == whole
    assert feed_bytewise(CommandDecoder(limit), blob) == whole


@given(
    room=st.text(max_size=20),
    users=st.lists(st.text(max_size=12), unique=True, max_size=30),
)
def test_a_user_list_kept_encoded_gives_the_same_bytes(room: str, users: list[str]) -> None:
    # The in-process presence keeps each room's list as encode_users gives it and grows it
    # id by id; either way user_joined_room is byte for byte what encode() writes.
    expected = encode(UserJoinedRoom(room, tuple(users)))
    assert encode_user_joined_room(room, encode_users(users)) == expected
    grown = b",".join(encode_user(user) for user in users)
    assert encode_user_joined_room(room, grown) == expected


@given(
    lines=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    limit=st.integers(min_value=1, max_value=25),
)
def test_lines_within_is_the_longest_line_against_the_limit(lines: list[int], limit: int) -> None:
    """The fast path's check on a read longer than one line may be: the same answer as
    splitting every line, for lines of any lengths (blank ones and "\\r" included)."""
    data = b"".join(b"x" * (length - 1) + b"\r\n" if length else b"\n" for length in lines)
    end = data.rfind(b"\n")
    assume(end >= 0)
    expected = max(map(len, data[:end].split(b"\n"))) <= limit
    assert lines_within(data, end, limit) is expected


@given(
    room=st.text(max_size=20),
    user=st.text(max_size=12),
    contents=st.lists(st.text(), max_size=20),
)
def test_a_run_of_messages_encoded_at_once_is_each_message_encoded(
    room: str, user: str, contents: list[str]
) -> None:
    """A sender's run is encoded in one call (newlines, quotes, backslashes, control
    characters and any Unicode included): the same bytes as each line written alone."""
    head = encode_head(UserMessage(room, user, ""))
    expected = b"".join(encode(UserMessage(room, user, content)) for content in contents)
    assert encode_messages(head, contents) == expected

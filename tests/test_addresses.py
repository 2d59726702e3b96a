"""roomchat.addresses: every rule of parse_address, every error, and format_address."""

from __future__ import annotations

from typing import Any

import pytest

from roomchat.addresses import format_address, parse_address

# -- what parses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:8080", ("example.org", 8080)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("  example.org:80 \n", ("example.org", 80)),  # surrounding whitespace
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1%eth0]:7000", ("fe80::1%eth0", 7000)),  # a scoped IPv6 address
        ("[::ffff:127.0.0.1]:7000", ("::ffff:127.0.0.1", 7000)),
    ],
)
def test_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    # defaults are only for what is missing
    assert parse_address(text, default_port=1, default_host="h", allow_port_zero=True) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org", ("example.org", 8080)),
        ("10.0.0.1", ("10.0.0.1", 8080)),
        ("[::1]", ("::1", 8080)),
        ("::1", ("::1", 8080)),  # a bare IPv6 literal never carries a port
        ("::1:9000", ("::1:9000", 8080)),  # ... so its last group is not one
        ("fe80::1%eth0", ("fe80::1%eth0", 8080)),
    ],
)
def test_a_missing_port_takes_the_default_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, default_port=8080) == expected


def test_a_missing_host_takes_the_default_host() -> None:
    assert parse_address(":8081", default_host="0.0.0.0") == ("0.0.0.0", 8081)
    assert parse_address(" :8081 ", default_host="::") == ("::", 8081)


def test_port_zero_only_when_allowed() -> None:
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    assert parse_address("[::1]:0", allow_port_zero=True) == ("::1", 0)
    assert parse_address(":0", default_host="0.0.0.0", allow_port_zero=True) == ("0.0.0.0", 0)
    with pytest.raises(ValueError, match=r"out of range \(1 to 65535\)"):
        parse_address("127.0.0.1:0")


# -- what does not, and what it says -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kwargs", "says"),
    [
        ("", {}, "the address is empty: expected HOST:PORT"),
        ("   ", {"default_port": 1}, "the address is empty"),
        (":8080", {}, "':8080' has no host: expected HOST:PORT"),
        ("example.org", {}, "'example.org' has no port: expected HOST:PORT"),
        ("8081", {"default_host": "0.0.0.0"}, "'8081' has no port: expected HOST:PORT or :PORT"),
        ("::1", {}, "'::1' has no port: expected [V6]:PORT"),
        ("[::1]", {}, "'[::1]' has no port: expected [V6]:PORT"),
        ("host:", {"default_port": 1}, "'host:': no port after ':'"),
        ("[::1]:", {}, "'[::1]:': no port after ':'"),
        ("host:http", {}, "'host:http': the port is not a number: 'http'"),
        ("host:+80", {}, "the port is not a number: '+80'"),
        ("host:8_0", {}, "the port is not a number: '8_0'"),
        ("host:٨٠", {}, "the port is not a number"),  # other scripts' digits
        ("host: 80", {}, "the port is not a number"),
        ("host:65536", {}, "'host:65536': the port is out of range (1 to 65535)"),
        ("host:70000", {"allow_port_zero": True}, "out of range (0 to 65535)"),
        ("host:0", {}, "out of range (1 to 65535)"),
        ("[::1", {"default_port": 1}, "'[::1': '[' without ']'"),
        ("[::1]x", {"default_port": 1}, "'[::1]x': expected ':PORT' after ']'"),
        ("[::1]8080", {}, "expected ':PORT' after ']'"),
        ("[]:80", {"default_host": "h"}, "only an IPv6 address goes between '[' and ']'"),
        ("[localhost]:80", {}, "only an IPv6 address goes between '[' and ']'"),
        ("host:80:90", {"default_port": 1}, "too many ':' (an IPv6 address is written [V6]:PORT)"),
        ("my host:80", {}, "'my host:80': the host 'my host' contains a space"),
    ],
)
def test_errors_say_what_is_wrong(text: str, kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_address(text, **kwargs)
    assert says in str(error.value)


# -- format_address --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sockname", "expected"),
    [
        (("127.0.0.1", 8080), "127.0.0.1:8080"),
        (("::1", 8080, 0, 0), "[::1]:8080"),
        (("fe80::1%eth0", 80, 0, 2), "[fe80::1%eth0]:80"),
        ("/run/roomchat.sock", "/run/roomchat.sock"),
        (("lonely",), "('lonely',)"),
    ],
)
def test_format_address(sockname: object, expected: str) -> None:
    assert format_address(sockname) == expected


@pytest.mark.parametrize("sockname", [("127.0.0.1", 8080), ("::1", 8080, 0, 0)])
def test_format_then_parse_round_trips(sockname: tuple[object, ...]) -> None:
    assert parse_address(format_address(sockname)) == sockname[:2]

"""``HOST:PORT`` addresses, parsed and formatted by one set of rules for the whole project:
the client (``roomchat tui``, ``roomchat stress --addr``) and the server's listening
addresses (``--metrics``, ``--ws``).

Pure functions: no I/O, no name resolution (a host name is checked by the resolver when
it is used, not here).

=================  ==========================================================
``HOST:PORT``      ``example.org:8080``, ``127.0.0.1:8080``
``[V6]:PORT``      ``[::1]:8080``, ``[fe80::1%eth0]:8080``
``:PORT``          ``default_host`` (a server: every interface), else an error
``HOST``           ``default_port`` (a client: the usual port), else an error
``V6`` / ``[V6]``  a bare IPv6 literal: ``default_port``, else an error
=================  ==========================================================

A port is 1 to 65535; 0 (the system picks a free port) only with ``allow_port_zero``,
which a listening address may want and an address to connect to never does.
"""

from __future__ import annotations

import ipaddress

__all__ = ["format_address", "parse_address"]

_MAX_PORT = 65535


def parse_address(
    value: str,
    *,
    default_port: int | None = None,
    default_host: str | None = None,
    allow_port_zero: bool = False,
) -> tuple[str, int]:
    """``value`` as ``(host, port)``; raises ValueError with a sentence saying what is
    wrong. Surrounding whitespace is ignored; an IPv6 host comes back without brackets."""
    text = value.strip()
    if not text:
        raise ValueError("the address is empty: expected HOST:PORT")
    host: str | None
    port_text: str | None
    ipv6 = False
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{value!r}: '[' without ']' (an IPv6 address is written [V6]:PORT)")
        host, rest = text[1:close], text[close + 1 :]
        if not _is_ipv6(host):
            raise ValueError(f"{value!r}: only an IPv6 address goes between '[' and ']'")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        ipv6 = True
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        host = host or None
    elif ":" in text:
        # Several colons and no brackets: an IPv6 literal, whose last group cannot be
        # told from a port ("::1:8080"), so it never carries one.
        if not _is_ipv6(text):
            raise ValueError(f"{value!r}: too many ':' (an IPv6 address is written [V6]:PORT)")
        host, port_text, ipv6 = text, None, True
    else:
        host, port_text = text, None

    if host is None:
        if default_host is None:
            raise ValueError(f"{value!r} has no host: expected HOST:PORT")
        host = default_host
    elif any(char.isspace() for char in host):
        raise ValueError(f"{value!r}: the host {host!r} contains a space")

    if port_text is None:
        if default_port is None:
            expected = "[V6]:PORT" if ipv6 else "HOST:PORT"
            if default_host is not None and not ipv6:
                expected += " or :PORT"
            raise ValueError(f"{value!r} has no port: expected {expected}")
        return host, default_port
    if not port_text:
        raise ValueError(f"{value!r}: no port after ':'")
    # isdigit() alone would take other scripts' digits, and int() signs and underscores.
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{value!r}: the port is not a number: {port_text!r}")
    port = int(port_text)
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= _MAX_PORT:
        raise ValueError(f"{value!r}: the port is out of range ({lowest} to {_MAX_PORT})")
    return host, port


def format_address(sockname: object) -> str:
    """A socket address as people write it: ``host:port``, ``[v6]:port`` for IPv6 (a
    ``getsockname()`` tuple of 2 or 4 items); anything else (a Unix path) as ``str``."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)  # a scope ("%eth0") included
    except ValueError:
        return False
    return True

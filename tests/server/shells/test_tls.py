"""TLS through the real server: a certificate made by trustme, clients that trust its CA,
plain-text clients on the TLS port (dropped, with a log line) and ``roomchat serve``'s
``--tls-cert``/``--tls-key``."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomchat.client import ChatClient, connect, tls_context
from roomchat.protocol import UserMessage
from roomchat.server import ChatServer, ServerConfig
from tests.conftest import Pki
from tests.helpers import TIMEOUT, joined, messages, raw_socket, wait_eof
from tests.serve_cli import assert_one_clean_line, run_roomchat, start_serve


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[ChatServer]:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        tls_cert=pki.cert,
        tls_key=pki.key,
        tls_handshake_timeout=0.5,
    )
    srv = await ChatServer.start(config)
    try:
        yield srv
    finally:
        await srv.close()


async def tls_client(server: ChatServer, pki: Pki) -> ChatClient:
    return await connect("127.0.0.1", server.port, timeout=TIMEOUT, ssl=tls_context(pki.ca))


async def wait_logged(caplog: pytest.LogCaptureFixture, needle: str) -> str:
    async with asyncio.timeout(TIMEOUT):
        while True:
            for record in caplog.records:
                if needle in record.getMessage():
                    return record.getMessage()
            await asyncio.sleep(0.01)


async def wait_no_connections(server: ChatServer) -> None:
    async with asyncio.timeout(TIMEOUT):
        while server.connections:
            await asyncio.sleep(0.01)


async def test_tls_clients_log_in_join_and_chat(tls_server: ChatServer, pki: Pki) -> None:
    alice = await tls_client(tls_server, pki)
    bob = await tls_client(tls_server, pki)
    await joined(alice, "general")
    await joined(bob, "general")
    await bob.send("general", "over TLS")
    got = await messages(bob, 1)
    assert got == [UserMessage("general", bob.user_id, "over TLS")]
    # alice saw bob join, then the message
    while True:
        event = await alice.next_event(TIMEOUT)
        if isinstance(event, UserMessage):
            assert event.content == "over TLS"
            break
    await alice.quit()
    await alice.wait_closed()
    bob.close()
    await wait_no_connections(tls_server)


async def test_plain_client_on_the_tls_port_is_dropped_and_logged(
    tls_server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "roomchat.server")
    loop = asyncio.get_running_loop()
    sock = await raw_socket(tls_server)
    try:
        await loop.sock_sendall(sock, b'{"_ct":"join_room","r":"general"}\n')
        await wait_eof(sock)
    finally:
        sock.close()
    line = await wait_logged(caplog, "TLS handshake failed")
    assert "127.0.0.1:" in line
    # Dropped for what it sent, not for running out the 0.5 s handshake timeout.
    assert "0.5 seconds" not in line, line
    await wait_no_connections(tls_server)


async def test_plain_client_that_sends_nothing_is_dropped_at_the_handshake_timeout(
    tls_server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "roomchat.server")
    sock = await raw_socket(tls_server)
    try:
        await wait_eof(sock)
    finally:
        sock.close()
    line = await wait_logged(caplog, "TLS handshake failed")
    assert "0.5 seconds" in line, line
    await wait_no_connections(tls_server)


async def test_a_client_that_does_not_trust_the_certificate_fails(
    tls_server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "roomchat.server")
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect("127.0.0.1", tls_server.port, timeout=TIMEOUT, ssl=True)
    await wait_logged(caplog, "TLS handshake failed")
    await wait_no_connections(tls_server)


async def test_shutdown_with_a_handshake_in_progress(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "roomchat.server")
    config = ServerConfig(host="127.0.0.1", port=0, tls_cert=pki.cert, tls_key=pki.key)
    server = await ChatServer.start(config)
    sock = await raw_socket(server)
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.connections:
                await asyncio.sleep(0.01)
        await server.close()
        await wait_eof(sock)
        # Aborted at once: nothing to flush, so no grace to wait out.
        assert "did not flush within" not in caplog.text, caplog.text
    finally:
        sock.close()


# -- roomchat serve --tls-cert --tls-key ------------------------------------------------
# Subprocesses: plain (synchronous) tests where the event loop does not matter.


def test_serve_with_tls_flags(pki: Pki) -> None:
    async def scenario() -> None:
        served = await start_serve("--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
        try:
            client = await connect(
                "127.0.0.1", served.port, timeout=TIMEOUT, ssl=tls_context(pki.ca)
            )
            await joined(client, "general")
            client.close()
            served.process.terminate()
            assert await asyncio.wait_for(served.process.wait(), TIMEOUT) == 0
        finally:
            if served.process.returncode is None:
                served.process.kill()
                await served.process.wait()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("which", "needle"),
    [
        ("missing cert", "No such file"),
        ("not pem", "not a valid PEM"),
        ("key without cert", "the certificate is missing"),
        ("cert without key", "the key is missing"),
    ],
)
def test_serve_with_bad_tls_files_is_one_line_and_nonzero(
    pki: Pki, tmp_path: Path, which: str, needle: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    args = {
        "missing cert": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.key)],
        "not pem": ["--tls-cert", str(junk), "--tls-key", str(pki.key)],
        "key without cert": ["--tls-key", str(pki.key)],
        "cert without key": ["--tls-cert", str(pki.cert)],
    }[which]
    status, stderr = asyncio.run(run_roomchat("serve", "--port", "0", *args))
    assert status != 0
    assert_one_clean_line(stderr, needle)


def test_tls_flags_in_help() -> None:
    for command in ("serve", "tui", "stress"):
        args = [command, "--help"] if command != "stress" else [command, "steady", "--help"]
        out = subprocess.run(
            [sys.executable, "-m", "roomchat", *args], capture_output=True, text=True, check=True
        ).stdout
        assert "--tls" in out, command

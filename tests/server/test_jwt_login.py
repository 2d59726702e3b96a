"""JWT logins through the real server (docs/moderation.md, "Logins"): a token signed by
an identity provider names the user, its claims give admin rights, private rooms and
roles; every refusal is ``auth_failed`` with its reason, then the close. roomchat's own
tokens keep working beside JWTs."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from roomchat.server import ChatServer, ServerConfig
from roomchat.server.app import ServerStartError
from roomchat.server.auth import mint_token
from tests.helpers import raw_login, wait_eof
from tests.serve_cli import run_roomchat
from tests.server.test_community import Peer

AUDIENCE = "chat"


def pem_pair(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    return pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
async def server(tmp_path: Path, rsa_keys: tuple[bytes, bytes]) -> AsyncIterator[ChatServer]:
    public = tmp_path / "jwt.pub"
    public.write_bytes(rsa_keys[1])
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, jwt_key_file=public, jwt_audience=AUDIENCE)
    )
    try:
        yield srv
    finally:
        await srv.close()


def token(rsa_keys: tuple[bytes, bytes], sub: str = "alice", **claims: Any) -> str:
    claims.setdefault("audience", AUDIENCE)
    return mint_token(rsa_keys[0], sub, algorithm="RS256", **claims)


async def hello(server: ChatServer, **fields: Any) -> tuple[Peer, dict[str, Any]]:
    sock, buffer, user = await raw_login(server)
    conn = Peer(sock, buffer, user)
    await conn.send(_ct="hello", v=2, **fields)
    return conn, await conn.event()


async def test_the_token_names_the_user_and_its_claims_grant(
    server: ChatServer, rsa_keys: tuple[bytes, bytes]
) -> None:
    conn, welcome = await hello(server, token=token(rsa_keys, admin=True, rooms=["vault"]))
    assert welcome["_et"] == "welcome" and welcome["u"] == "alice", welcome
    await conn.next("rooms")
    # admin: may create rooms though --user-rooms is off, and private ones.
    await conn.send(_ct="create_room", r="vault", p=True)
    await conn.next("room_added")
    # The rooms claim lets bob into the private room without an invitation.
    bob, welcome = await hello(server, name="Bob", token=token(rsa_keys, "bob", rooms=["vault"]))
    assert welcome["u"] == "Bob"
    await bob.next("rooms")
    await bob.join("vault")
    carol, _ = await hello(server, token=token(rsa_keys, "carol"))
    await carol.next("rooms")
    await carol.send(_ct="join_room", r="vault")
    await carol.error("not_authorised")
    await carol.send(_ct="create_room", r="mine")
    await carol.error("not_authorised")


def none_token(sub: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': sub, 'aud': AUDIENCE})}."


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda keys: none_token("alice"), "none"),
        (
            lambda keys: mint_token(
                pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))[0],
                "alice",
                algorithm="RS256",
                audience=AUDIENCE,
            ),
            "signature",
        ),
        (lambda keys: token(keys, now=time.time() - 7200, seconds=60), "expired"),
        (lambda keys: token(keys, audience="elsewhere"), "audience"),
        (lambda keys: mint_token(b"s" * 32, "alice", audience=AUDIENCE), "not accepted"),
    ],
    ids=["alg-none", "wrong-key", "expired", "wrong-audience", "hs256-for-an-rsa-key"],
)
async def test_refused_tokens(
    server: ChatServer, rsa_keys: tuple[bytes, bytes], make: Any, reason: str
) -> None:
    conn, error = await hello(server, token=make(rsa_keys))
    assert error["_et"] == "error" and error["code"] == "auth_failed", error
    assert error["cmd"] == "hello"
    assert reason in error["msg"], error["msg"]
    await wait_eof(conn.sock)


async def test_a_token_for_another_name_is_refused(
    server: ChatServer, rsa_keys: tuple[bytes, bytes]
) -> None:
    conn, error = await hello(server, name="mallory", token=token(rsa_keys, "alice"))
    assert error["code"] == "auth_failed" and "'alice'" in error["msg"], error
    await wait_eof(conn.sock)


async def test_names_need_a_token_and_welcome_tokens_still_resume(
    server: ChatServer, rsa_keys: tuple[bytes, bytes]
) -> None:
    conn, error = await hello(server, name="alice")
    assert error["code"] == "not_authorised", error
    conn, welcome = await hello(server, token=token(rsa_keys))
    resume = welcome["t"]
    conn.close()
    again, welcome = await hello(server, name="alice", token=resume)
    assert welcome["_et"] == "welcome" and welcome["u"] == "alice", welcome
    again.close()
    anonymous, welcome = await hello(server)  # a random id needs no token
    assert welcome["_et"] == "welcome"
    anonymous.close()


async def test_the_token_command_mints_a_jwt_the_server_takes(tmp_path: Path) -> None:
    private, public = pem_pair(ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "key.pem").write_bytes(private)
    (tmp_path / "key.pub").write_bytes(public)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomchat",
        "token",
        "dana",
        "--jwt-key-file",
        str(tmp_path / "key.pem"),
        "--admin",
        "--ttl",
        "10m",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, jwt_key_file=tmp_path / "key.pub")
    )
    try:
        conn, welcome = await hello(srv, token=out.decode().strip())
        assert welcome["u"] == "dana", welcome
        await conn.next("rooms")
        await conn.send(_ct="create_room", r="news")
        await conn.next("room_added")
    finally:
        await srv.close()


async def test_bad_key_files_stop_the_start(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="missing"):
        await ChatServer.start(
            ServerConfig(host="127.0.0.1", port=0, jwt_key_file=tmp_path / "missing")
        )
    status, stderr = await run_roomchat(
        "serve", "--port", "0", "--jwt-key-file", str(tmp_path / "missing")
    )
    assert status != 0 and "missing" in stderr and "Traceback" not in stderr

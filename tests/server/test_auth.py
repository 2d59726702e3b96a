"""JWT logins (server/auth.py): keys from files, claims, and every refusal with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from roomchat.server.auth import (
    MAX_TOKEN_LENGTH,
    Authenticator,
    AuthError,
    Identity,
    looks_like_jwt,
    mint,
    mint_token,
)

NOW = 1_700_000_000.0


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes
    public_file: Path
    private_key: Any


def _pair(directory: Path, name: str, private_key: Any) -> KeyPair:
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_file = directory / f"{name}.pub.pem"
    public_file.write_bytes(public_pem)
    return KeyPair(private_pem, public_pem, public_file, private_key)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def rsa_pair(keys_dir: Path) -> KeyPair:
    return _pair(keys_dir, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def other_rsa_pair(keys_dir: Path) -> KeyPair:
    return _pair(keys_dir, "rsa2", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_pair(keys_dir: Path) -> KeyPair:
    return _pair(keys_dir, "ec", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def secret(tmp_path: Path) -> bytes:
    return base64.b64encode(secrets.token_bytes(36))  # 48 bytes of text


@pytest.fixture
def secret_file(tmp_path: Path, secret: bytes) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(secret + b"\n")
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _part(obj: object) -> str:
    return _b64(json.dumps(obj).encode())


def _hs256_by_hand(key: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{_part(header)}.{_part(payload)}"
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 3600, **extra}


def _refused(auth: Authenticator, token: str, reason: str, now: float = NOW) -> None:
    with pytest.raises(AuthError) as caught:
        auth.verify(token, now=now)
    assert str(caught.value) == reason


# -- keys from files, the three algorithms ---------------------------------------------------


def test_hs256_secret_file(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file))
    token = mint_token(secret, "alice", now=NOW)
    assert looks_like_jwt(token)
    assert auth.verify(token, now=NOW + 10) == Identity("alice", expires=int(NOW) + 3600)
    assert auth.description == f"JWT (HS256, key from {secret_file})"


def test_rs256_public_pem(rsa_pair: KeyPair) -> None:
    auth = Authenticator(key_file=str(rsa_pair.public_file), audience="chat")
    token = mint_token(rsa_pair.private_pem, "bob", algorithm="RS256", audience="chat", now=NOW)
    assert auth.verify(token, now=NOW).name == "bob"
    assert auth.description == f"JWT (RS256, key from {rsa_pair.public_file}, audience 'chat')"


def test_es256_public_pem(ec_pair: KeyPair) -> None:
    auth = Authenticator(key_file=str(ec_pair.public_file), issuer="https://idp.example")
    token = mint_token(
        ec_pair.private_pem.decode(), "carol", algorithm="ES256", issuer="https://idp.example"
    )
    assert auth.verify(token).name == "carol"  # the clock: minted and checked now
    assert auth.description == (
        f"JWT (ES256, key from {ec_pair.public_file}, issuer 'https://idp.example')"
    )


def test_jwks_two_keys_picked_by_kid(
    tmp_path: Path, rsa_pair: KeyPair, ec_pair: KeyPair, other_rsa_pair: KeyPair
) -> None:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_pair.private_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_pair.private_key.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps({"keys": [{**rsa_jwk, "kid": "r1", "use": "sig"}, {**ec_jwk, "kid": "e1"}]})
    )
    auth = Authenticator(jwks_file=str(path))
    assert auth.description == f"JWT (RS256/ES256, 2 keys from {path})"

    by_rsa = mint_token(rsa_pair.private_pem, "alice", algorithm="RS256", kid="r1", now=NOW)
    by_ec = mint_token(ec_pair.private_pem, "bob", algorithm="ES256", kid="e1", now=NOW)
    assert auth.verify(by_rsa, now=NOW).name == "alice"
    assert auth.verify(by_ec, now=NOW).name == "bob"

    # The kid picks the key: the EC key does not verify an RS256 token, a stranger's RSA
    # key is not the one named, and a token must say which key.
    lying = mint_token(rsa_pair.private_pem, "alice", algorithm="RS256", kid="e1", now=NOW)
    _refused(auth, lying, "algorithm RS256 is not accepted")
    stranger = mint_token(other_rsa_pair.private_pem, "eve", algorithm="RS256", kid="r1", now=NOW)
    _refused(auth, stranger, "bad signature")
    unknown = mint_token(rsa_pair.private_pem, "alice", algorithm="RS256", kid="zz", now=NOW)
    _refused(auth, unknown, "unknown kid")
    no_kid = mint_token(rsa_pair.private_pem, "alice", algorithm="RS256", now=NOW)
    _refused(auth, no_kid, "token has no kid")


def test_jwks_one_key_needs_no_kid(tmp_path: Path, ec_pair: KeyPair) -> None:
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_pair.private_key.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [ec_jwk]}))
    auth = Authenticator(jwks_file=str(path))
    assert auth.description == f"JWT (ES256, 1 key from {path})"
    token = mint_token(ec_pair.private_pem, "alice", algorithm="ES256", now=NOW)
    assert auth.verify(token, now=NOW).name == "alice"


def test_jwks_hmac_key(tmp_path: Path, secret: bytes) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": _b64(secret)}]}))
    auth = Authenticator(jwks_file=str(path))
    assert auth.verify(mint(secret, "alice", kid="h", now=NOW), now=NOW).name == "alice"


# -- claims -----------------------------------------------------------------------------------


def test_claims_parsed(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file))
    token = mint_token(
        secret,
        "alice",
        admin=True,
        rooms=["secret-lab", "ops"],
        roles={"ops": "owner", "lobby": "moderator", "book-club": "member"},
        seconds=60,
        now=NOW,
    )
    assert auth.verify(token, now=NOW) == Identity(
        name="alice",
        admin=True,
        rooms=("secret-lab", "ops"),
        roles=(("book-club", "member"), ("lobby", "moderator"), ("ops", "owner")),
        expires=int(NOW) + 60,
    )


def test_optional_claims_absent(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file))
    token = jwt.encode({"sub": "bob", "admin": False, "rooms": [], "roles": {}}, secret, "HS256")
    assert auth.verify(token, now=NOW) == Identity("bob")


def test_audience_as_a_list(rsa_pair: KeyPair) -> None:
    auth = Authenticator(key_file=str(rsa_pair.public_file), audience="chat")
    token = jwt.encode(_claims(aud=["wiki", "chat"]), rsa_pair.private_pem, "RS256")
    assert auth.verify(token, now=NOW).name == "alice"


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_refused(secret_file: Path, alg: str) -> None:
    auth = Authenticator(key_file=str(secret_file))
    token = f"{_part({'alg': alg, 'typ': 'JWT'})}.{_part(_claims())}."
    assert looks_like_jwt(token)
    _refused(auth, token, "algorithm none is not accepted")


def test_wrong_key_refused(secret_file: Path, rsa_pair: KeyPair, other_rsa_pair: KeyPair) -> None:
    hmac_auth = Authenticator(key_file=str(secret_file))
    _refused(hmac_auth, mint_token(b"x" * 40, "alice", now=NOW), "bad signature")
    rsa_auth = Authenticator(key_file=str(rsa_pair.public_file))
    foreign = mint_token(other_rsa_pair.private_pem, "alice", algorithm="RS256", now=NOW)
    _refused(rsa_auth, foreign, "bad signature")


def test_tampered_payload_refused(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file))
    header, _, signature = mint_token(secret, "alice", now=NOW).split(".")
    forged = f"{header}.{_part(_claims(sub='root', admin=True))}.{signature}"
    _refused(auth, forged, "bad signature")


def test_expiry_with_leeway(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file), leeway=30)
    token = mint_token(secret, "alice", seconds=60, now=NOW)
    assert auth.verify(token, now=NOW + 60 + 29).name == "alice"
    _refused(auth, token, "token expired", now=NOW + 60 + 30)
    strict = Authenticator(key_file=str(secret_file), leeway=0)
    _refused(strict, token, "token expired", now=NOW + 60)


def test_nbf_in_future_refused(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file), leeway=30)
    token = jwt.encode(_claims(nbf=int(NOW) + 300), secret, "HS256")
    _refused(auth, token, "token not yet valid")
    assert auth.verify(token, now=NOW + 271).name == "alice"


def test_iat_in_future_refused(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file))
    token = jwt.encode(_claims(iat=int(NOW) + 300), secret, "HS256")
    _refused(auth, token, "token issued in the future")


def test_audience(rsa_pair: KeyPair) -> None:
    auth = Authenticator(key_file=str(rsa_pair.public_file), audience="chat")
    pem = rsa_pair.private_pem
    wrong = mint_token(pem, "alice", algorithm="RS256", audience="wiki", now=NOW)
    _refused(auth, wrong, "wrong audience")
    missing = mint_token(pem, "alice", algorithm="RS256", now=NOW)
    _refused(auth, missing, "token has no aud")
    bad_type = jwt.encode(_claims(aud=7), pem, "RS256")
    _refused(auth, bad_type, "claim aud must be a string or a list of strings")
    # Without a configured audience, a token meant for one is refused (RFC 7519 4.1.3).
    any_audience = Authenticator(key_file=str(rsa_pair.public_file))
    _refused(any_audience, wrong, "token has an aud but the server expects none")
    assert any_audience.verify(missing, now=NOW).name == "alice"


def test_issuer(ec_pair: KeyPair) -> None:
    auth = Authenticator(key_file=str(ec_pair.public_file), issuer="idp")
    pem = ec_pair.private_pem
    _refused(auth, mint_token(pem, "a", algorithm="ES256", issuer="evil", now=NOW), "wrong issuer")
    _refused(auth, mint_token(pem, "a", algorithm="ES256", now=NOW), "token has no iss")


def test_algorithm_confusion_refused(rsa_pair: KeyPair, ec_pair: KeyPair) -> None:
    # The classic attack: HS256 with the server's *public* key as the HMAC secret.
    auth = Authenticator(key_file=str(rsa_pair.public_file))  # HS256 is in the algorithms
    header = {"alg": "HS256", "typ": "JWT"}
    for key in (rsa_pair.public_pem, rsa_pair.public_pem.rstrip(b"\n")):
        _refused(auth, _hs256_by_hand(key, header, _claims()), "algorithm HS256 is not accepted")
    # An EC key verifies ES256 only.
    ec_auth = Authenticator(key_file=str(ec_pair.public_file))
    rs256 = mint_token(rsa_pair.private_pem, "alice", algorithm="RS256", now=NOW)
    _refused(ec_auth, rs256, "algorithm RS256 is not accepted")
    _refused(
        ec_auth,
        _hs256_by_hand(ec_pair.public_pem, header, _claims()),
        "algorithm HS256 is not accepted",
    )


def test_hmac_secret_refuses_asymmetric_algorithms(
    secret_file: Path, rsa_pair: KeyPair, ec_pair: KeyPair
) -> None:
    auth = Authenticator(key_file=str(secret_file))
    rs256 = mint_token(rsa_pair.private_pem, "alice", algorithm="RS256", now=NOW)
    _refused(auth, rs256, "algorithm RS256 is not accepted")
    es256 = mint_token(ec_pair.private_pem, "alice", algorithm="ES256", now=NOW)
    _refused(auth, es256, "algorithm ES256 is not accepted")


def test_algorithm_outside_configured_list_refused(tmp_path: Path) -> None:
    secret = secrets.token_hex(32).encode()  # 64 bytes: what HS512 wants
    secret_file = tmp_path / "secret512"
    secret_file.write_bytes(secret)
    auth = Authenticator(key_file=str(secret_file))  # HS256 only, of the HMAC family
    hs512 = mint_token(secret, "alice", algorithm="HS512", now=NOW)
    _refused(auth, hs512, "algorithm HS512 is not accepted")
    wider = Authenticator(key_file=str(secret_file), algorithms=["HS256", "HS512"])
    assert wider.verify(hs512, now=NOW).name == "alice"
    assert wider.description == f"JWT (HS256/HS512, key from {secret_file})"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(NOW) + 60}, "token has no sub"),
        ({"sub": "bad name!"}, "sub is not a valid user name"),
        ({"sub": ""}, "sub is not a valid user name"),
        ({"sub": "x" * 33}, "sub is not a valid user name"),
        ({"sub": 42}, "sub is not a valid user name"),
        ({"sub": None}, "sub is not a valid user name"),
    ],
)
def test_bad_sub_refused(
    secret_file: Path, secret: bytes, claims: dict[str, Any], reason: str
) -> None:
    auth = Authenticator(key_file=str(secret_file))
    _refused(auth, jwt.encode(claims, secret, "HS256"), reason)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"admin": "yes"}, "claim admin must be true or false"),
        ({"admin": 1}, "claim admin must be true or false"),
        ({"rooms": "lobby"}, "claim rooms must be a list of room names"),
        ({"rooms": ["lobby", 7]}, "claim rooms must be a list of room names"),
        ({"rooms": {"lobby": True}}, "claim rooms must be a list of room names"),
        ({"roles": ["lobby"]}, "claim roles must map room names to owner, moderator or member"),
        (
            {"roles": {"lobby": "king"}},
            "claim roles must map room names to owner, moderator or member",
        ),
        ({"roles": {"lobby": 1}}, "claim roles must map room names to owner, moderator or member"),
        ({"exp": "soon"}, "claim exp must be a number"),
        ({"exp": True}, "claim exp must be a number"),
        ({"nbf": [1]}, "claim nbf must be a number"),
        ({"iat": None}, "claim iat must be a number"),
    ],
)
def test_bad_claim_types_refused(
    secret_file: Path, secret: bytes, claims: dict[str, Any], reason: str
) -> None:
    auth = Authenticator(key_file=str(secret_file))
    _refused(auth, jwt.encode(_claims(**claims), secret, "HS256"), reason)


def test_oversized_token_refused(secret_file: Path, secret: bytes) -> None:
    auth = Authenticator(key_file=str(secret_file))
    _refused(auth, "a" * (MAX_TOKEN_LENGTH + 1), f"token longer than {MAX_TOKEN_LENGTH} characters")
    # Correctly signed, but too long: refused before decoding all the same.
    big = mint_token(secret, "alice", rooms=[f"room-{i}" for i in range(1000)], now=NOW)
    assert len(big) > MAX_TOKEN_LENGTH
    _refused(auth, big, f"token longer than {MAX_TOKEN_LENGTH} characters")
    assert not looks_like_jwt(big)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "1700003600.q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8",  # roomchat's own HMAC token
        "a.b.c.d",
        "e30.e30.",  # {}: no alg
        f"{_part({'alg': 'HS256'})}.bm90IGpzb24.c2ln",  # payload not JSON
        f"{_part({'alg': 'HS256'})}.{_part([1, 2])}.c2ln",  # payload not an object
        "@@@.###.$$$",
        "éé.éé.éé",
    ],
)
def test_malformed_tokens_refused(secret_file: Path, token: str) -> None:
    auth = Authenticator(key_file=str(secret_file))
    with pytest.raises(AuthError):
        auth.verify(token, now=NOW)


def test_looks_like_jwt(secret: bytes) -> None:
    assert looks_like_jwt(mint_token(secret, "alice", now=NOW))
    assert Authenticator.looks_like_jwt("a.b.c")
    assert not looks_like_jwt("1700003600.q83vEjRWeJq83vEjRWeJq8")
    assert not looks_like_jwt("")
    assert not looks_like_jwt("a.b.c.d")
    assert not looks_like_jwt("a b.c.d")


# -- bad key files and settings -----------------------------------------------------------------


def _bad_config(match: str, **kwargs: Any) -> None:
    with pytest.raises(ValueError, match=match):
        Authenticator(**kwargs)


def test_bad_key_files(tmp_path: Path, rsa_pair: KeyPair) -> None:
    missing = tmp_path / "missing.pem"
    _bad_config(f"cannot read the key file '{missing}'", key_file=str(missing))

    short = tmp_path / "short"
    short.write_bytes(b"too short\n")
    _bad_config(f"HMAC secret in the key file '{short}' is 9 bytes", key_file=str(short))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    _bad_config("is 0 bytes", key_file=str(empty))

    private = tmp_path / "private.pem"
    private.write_bytes(rsa_pair.private_pem)
    _bad_config(f"key file '{private}' holds a private key", key_file=str(private))

    broken = tmp_path / "broken.pem"
    broken.write_bytes(rsa_pair.public_pem[:60] + rsa_pair.public_pem[-30:])
    _bad_config(f"key file '{broken}' is not a valid PEM public key", key_file=str(broken))

    # Public keys in other forms must never become an HMAC secret.
    jwk = tmp_path / "key.json"
    jwk.write_text(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_pair.private_key.public_key()))
    _bad_config(f"key file '{jwk}' looks like JSON", key_file=str(jwk))
    der = tmp_path / "key.der"
    der.write_bytes(
        rsa_pair.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    _bad_config(f"key file '{der}' holds a DER public key", key_file=str(der))
    ssh = tmp_path / "id_rsa.pub"
    ssh.write_bytes(
        rsa_pair.private_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    _bad_config(f"key file '{ssh}' holds an OpenSSH public key", key_file=str(ssh))


def test_key_that_fits_no_accepted_algorithm(tmp_path: Path, rsa_pair: KeyPair) -> None:
    p384 = _pair(tmp_path, "p384", ec.generate_private_key(ec.SECP384R1()))
    _bad_config(
        f"the key in '{p384.public_file}' is an EC public key \\(secp384r1\\), which verifies "
        "ES384",
        key_file=str(p384.public_file),
    )
    assert Authenticator(key_file=str(p384.public_file), algorithms=["ES384"])
    _bad_config("an RSA public key", key_file=str(rsa_pair.public_file), algorithms=["ES256"])


def test_bad_jwks_files(tmp_path: Path, rsa_pair: KeyPair) -> None:
    missing = tmp_path / "missing.json"
    _bad_config(f"cannot read the JWKS file '{missing}'", jwks_file=str(missing))
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    _bad_config(f"the JWKS file '{path}' is not valid JSON", jwks_file=str(path))
    path.write_text('{"kty": "RSA"}')
    _bad_config(f"the JWKS file '{path}' is not a key set", jwks_file=str(path))
    path.write_text('{"keys": []}')
    _bad_config(f"the JWKS file '{path}' has no usable key", jwks_file=str(path))
    path.write_text('{"keys": [{"kty": "RSA", "n": "AQAB"}]}')
    _bad_config(f"the JWKS file '{path}' has no usable key", jwks_file=str(path))
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_pair.private_key.public_key()))
    path.write_text(json.dumps({"keys": [{**rsa_jwk, "kid": "a"}, {**rsa_jwk, "kid": "a"}]}))
    _bad_config(f"the keys in the JWKS file '{path}' need distinct kids", jwks_file=str(path))
    path.write_text(json.dumps({"keys": [{**rsa_jwk, "use": "enc"}]}))
    _bad_config(f"the JWKS file '{path}' has no signing key", jwks_file=str(path))
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": _b64(b"short")}]}))
    _bad_config("is 5 bytes", jwks_file=str(path))


def test_bad_settings(secret_file: Path) -> None:
    _bad_config("exactly one of key_file and jwks_file")
    _bad_config(
        "exactly one of key_file and jwks_file", key_file=str(secret_file), jwks_file="x.json"
    )
    _bad_config("unsupported JWT algorithm", key_file=str(secret_file), algorithms=["none"])
    _bad_config("not one string", key_file=str(secret_file), algorithms="HS256")
    _bad_config("leeway", key_file=str(secret_file), leeway=-1)
    _bad_config("must not be empty", key_file=str(secret_file), audience="")


def test_mint_token_refusals(secret: bytes, rsa_pair: KeyPair) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        mint_token(b"short", "alice")
    with pytest.raises(ValueError, match="not a PEM key"):
        mint_token(rsa_pair.public_pem, "alice")
    with pytest.raises(ValueError, match="PEM private key"):
        mint_token(secret, "alice", algorithm="RS256")
    with pytest.raises(ValueError, match="not a valid user name"):
        mint_token(secret, "no spaces")
    with pytest.raises(ValueError, match="unsupported"):
        mint_token(secret, "alice", algorithm="none")
    with pytest.raises(ValueError, match="roles"):
        mint_token(secret, "alice", roles={"lobby": "king"})

"""The auth service in this process: real gRPC calls over a channel, real HTTP for the JWKS, real NATS.

Most tests share one nats-server process (module scope: a fresh server, or a
container, per test would dominate the run time); the test that stops NATS
uses the plugin's `nats_server`.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from nats.aio.client import Client as Nats
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from structlog.testing import capture_logs

from meshcast.auth.app import JWKS_PATH, AuthApp
from meshcast.bus import Subjects
from meshcast.proto import auth_pb2_grpc
from meshcast.proto.auth_pb2 import (
    DisconnectUserRequest,
    IssueConnectionTokenRequest,
    IssueConnectionTokenResponse,
    IssueSubscriptionTokenRequest,
    KeysRequest,
    RevokeTokenRequest,
    RevokeUserRequest,
)
from meshcast.proto.bus_pb2 import Control
from meshcast.testing import (
    AUTH_API_KEY,
    NatsServer,
    auth_process,
    keyed_channel,
    keys,
    timeout,
    wait_until_async,
    within,
)
from meshcast.tokens import (
    ConnectionClaims,
    JwksSource,
    SubscriptionClaims,
    TokenInvalid,
    Verifier,
    hmac_key,
    keys_from_jwks,
)
from meshcast.tokens.revocations import BUCKET, Revocations, jti_key, user_key

from .harness import AuthService, auth_settings

SECRET = "an-hmac-secret-of-at-least-32-bytes-0123456789"
KEYS: dict[str, Any] = {
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
}


def private_pem(key: Any) -> str:
    return keys.private_pem(key).decode()


def public_pem(key: Any) -> str:
    return keys.public_pem(key).decode()


class Auth(AuthService):
    """A running auth service, a gRPC stub connected to it, and its HTTP side."""

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.app.health_port}{JWKS_PATH}"

    async def http_get(self, path: str) -> tuple[int, str, bytes]:
        def get() -> tuple[int, str, bytes]:
            url = f"http://127.0.0.1:{self.app.health_port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.status, resp.headers.get("Content-Type", ""), resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("Content-Type", ""), exc.read()

        return await asyncio.to_thread(get)

    async def jwks(self) -> dict[str, Any]:
        status, content_type, body = await self.http_get(JWKS_PATH)
        assert (status, content_type) == (200, "application/json")
        document: dict[str, Any] = json.loads(body)
        return document

    async def issue(self, user: str = "alice", **fields: Any) -> IssueConnectionTokenResponse:
        reply: IssueConnectionTokenResponse = await self.stub.IssueConnectionToken(
            IssueConnectionTokenRequest(user=user, **fields), timeout=5
        )
        return reply


StartAuth = Callable[..., Awaitable[Auth]]


@pytest.fixture(scope="module")
def shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("auth-nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def start_auth(shared_nats: NatsServer) -> AsyncIterator[StartAuth]:
    """Start an auth service (signing with `SECRET` unless told otherwise) on the shared NATS."""
    started: list[Auth] = []

    async def start(nats_url: str = shared_nats.url, **overrides: Any) -> Auth:
        if "signing_key" not in overrides:
            overrides.setdefault("token_hmac_secret", SECRET)
        app = AuthApp(auth_settings(nats_url, **{"nats_timeout": 1.0, **overrides}))
        await within(app.start(), 10)
        auth = Auth(app)
        started.append(auth)
        return auth

    yield start
    for auth in started:
        await auth.close()


@pytest.fixture
async def nc(shared_nats: NatsServer) -> AsyncIterator[Nats]:
    client = await nats.connect(shared_nats.url)
    yield client
    await client.close()


async def control_subscription(nc: Nats) -> Subscription:
    sub = await nc.subscribe(Subjects().control)
    await nc.flush()
    return sub


async def next_control(sub: Subscription) -> Control:
    msg = await sub.next_msg(timeout=5)
    control = Control()
    control.ParseFromString(msg.data)
    return control


async def kv_value(nc: Nats, key: str) -> bytes:
    kv = await nc.jetstream().key_value(BUCKET)
    entry = await kv.get(key)
    assert entry.value is not None
    return entry.value


# Issuing and keys.


@pytest.mark.parametrize("alg", list(KEYS))
async def test_token_signed_by_each_key_type_verifies_with_the_jwks_served_over_http(
    start_auth: StartAuth, alg: str
) -> None:
    auth = await start_auth(signing_key=private_pem(KEYS[alg]), token_hmac_secret=SECRET)
    before = int(time.time())
    reply = await auth.issue("alice", ttl_seconds=120, info_json=b'{"name": "Alice"}', channels=["news", "#alice"])

    document = await auth.jwks()
    [jwk] = document["keys"]
    assert (jwk["alg"], jwk["use"]) == (alg, "sig")
    assert "d" not in jwk  # the private half is never published
    header = jwt.get_unverified_header(reply.token)
    assert (header["alg"], header["kid"]) == (alg, jwk["kid"])
    claims = await Verifier(keys_from_jwks(document)).verify(reply.token)
    assert claims["sub"] == "alice"
    assert claims["jti"] == reply.jti
    assert claims["exp"] == reply.expires_at == claims["iat"] + 120
    assert before <= claims["iat"] <= int(time.time())
    assert claims["info"] == {"name": "Alice"}
    assert claims["channels"] == ["news", "#alice"]
    parsed = ConnectionClaims.parse(claims)
    assert (parsed.info, set(parsed.channels)) == (b'{"name":"Alice"}', {"news", "#alice"})
    # The private key signs; the HMAC secret also configured does not.
    with pytest.raises(TokenInvalid):
        await Verifier([hmac_key(SECRET)]).verify(reply.token)


async def test_jwks_source_pointed_at_the_url_verifies_issued_tokens(start_auth: StartAuth) -> None:
    auth = await start_auth(signing_key=private_pem(KEYS["ES256"]))
    connection = await auth.issue("bob")
    subscription = await auth.stub.IssueSubscriptionToken(
        IssueSubscriptionTokenRequest(user="bob", channel="$secret:room", info_json=b"[1,2]"), timeout=5
    )
    verifier = Verifier([], JwksSource(auth.jwks_url))
    assert (await verifier.verify(connection.token))["sub"] == "bob"
    claims = SubscriptionClaims.parse(await verifier.verify(subscription.token))
    assert (claims.user, claims.channel, claims.info) == ("bob", "$secret:room", b"[1,2]")
    assert claims.expires_at == subscription.expires_at


async def test_hmac_only_signs_hs256_and_publishes_no_key(start_auth: StartAuth) -> None:
    auth = await start_auth(token_hmac_secret=SECRET)
    reply = await auth.issue("carol", ttl_seconds=60)
    assert await auth.jwks() == {"keys": []}
    keys_reply = await auth.stub.Keys(KeysRequest(), timeout=5)
    assert json.loads(keys_reply.jwks_json) == {"keys": []}
    assert jwt.get_unverified_header(reply.token)["alg"] == "HS256"
    claims = await Verifier([hmac_key(SECRET)]).verify(reply.token)
    assert (claims["sub"], claims["exp"]) == ("carol", reply.expires_at)
    assert "info" not in claims
    assert "channels" not in claims


async def test_default_ttl_applies_when_none_is_asked(start_auth: StartAuth) -> None:
    auth = await start_auth(token_default_ttl=600)
    reply = await auth.issue("dave")
    claims = jwt.decode(reply.token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600


async def test_rotation_keeps_tokens_of_the_previous_key_valid(start_auth: StartAuth) -> None:
    old, new = KEYS["RS256"], KEYS["EdDSA"]
    before = await start_auth(signing_key=private_pem(old))
    old_token = (await before.issue("erin")).token
    await before.app.stop()

    after = await start_auth(signing_key=private_pem(new), verify_only_keys=[public_pem(old)])
    new_token = (await after.issue("erin")).token
    document = await after.jwks()
    assert [k["alg"] for k in document["keys"]] == ["EdDSA", "RS256"]
    verifier = Verifier([], JwksSource(after.jwks_url))
    assert (await verifier.verify(old_token))["sub"] == "erin"
    assert (await verifier.verify(new_token))["sub"] == "erin"
    assert jwt.get_unverified_header(old_token)["kid"] == document["keys"][1]["kid"]


async def test_rotation_of_a_key_with_an_explicit_kid(start_auth: StartAuth) -> None:
    before = await start_auth(signing_key=private_pem(KEYS["ES384"]), signing_key_id="2024-01")
    old_token = (await before.issue("frank")).token
    await before.app.stop()

    after = await start_auth(
        signing_key=private_pem(KEYS["ES512"]),
        signing_key_id="2024-02",
        verify_only_keys=[{"pem": public_pem(KEYS["ES384"]), "kid": "2024-01"}],
    )
    document = await after.jwks()
    assert [(k["kid"], k["alg"]) for k in document["keys"]] == [("2024-02", "ES512"), ("2024-01", "ES384")]
    assert (await Verifier([], JwksSource(after.jwks_url)).verify(old_token))["sub"] == "frank"


async def test_audience_and_issuer_from_settings_and_request(start_auth: StartAuth) -> None:
    auth = await start_auth(token_audience="meshcast", token_issuer="https://auth.example")
    verifier = Verifier([hmac_key(SECRET)], audience="meshcast", issuer="https://auth.example")
    claims = await verifier.verify((await auth.issue("gina")).token)
    assert (claims["aud"], claims["iss"]) == ("meshcast", "https://auth.example")
    other = await auth.issue("gina", audience="other-app")
    claims = await Verifier([hmac_key(SECRET)], audience="other-app").verify(other.token)
    assert claims["aud"] == "other-app"


async def test_keys_rpc_and_http_serve_the_same_document(start_auth: StartAuth) -> None:
    auth = await start_auth(signing_key=private_pem(KEYS["ES256"]), verify_only_keys=[public_pem(KEYS["RS256"])])
    reply = await auth.stub.Keys(KeysRequest(), timeout=5)
    assert json.loads(reply.jwks_json) == await auth.jwks()
    assert len(json.loads(reply.jwks_json)["keys"]) == 2


async def test_every_call_needs_the_api_key(start_auth: StartAuth) -> None:
    auth = await start_auth()
    target = f"127.0.0.1:{auth.app.grpc_port}"
    calls = {
        "IssueConnectionToken": IssueConnectionTokenRequest(user="mallory"),
        "RevokeUser": RevokeUserRequest(user="alice"),
        "Keys": KeysRequest(),
    }
    for channel in (grpc.aio.insecure_channel(target), keyed_channel(target, "wrong-key")):
        async with channel:
            stub: Any = auth_pb2_grpc.AuthServiceStub(channel)
            for method, request in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await getattr(stub, method)(request, timeout=timeout(5))
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
                assert "apikey" in (refused.value.details() or "")
    # The same key as the HTTP convention, in metadata: accepted.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        reply = await stub.IssueConnectionToken(
            IssueConnectionTokenRequest(user="alice"),
            metadata=(("authorization", f"ApiKey {AUTH_API_KEY}"),),
            timeout=timeout(5),
        )
        assert reply.token


async def test_no_key_no_start_unless_insecure_is_explicit(start_auth: StartAuth) -> None:
    with pytest.raises(ValidationError, match="api_key is required"):
        auth_settings("nats://127.0.0.1:1", token_hmac_secret=SECRET, api_key="")
    with capture_logs() as logs:
        auth = await start_auth(api_key="", api_insecure=True)
    assert any("without a key" in entry["event"] for entry in logs)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth.app.grpc_port}") as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).IssueConnectionToken(
            IssueConnectionTokenRequest(user="alice"), timeout=timeout(5)
        )
    assert reply.token


async def test_health_ready_metrics_and_unknown_paths(start_auth: StartAuth) -> None:
    auth = await start_auth()
    await auth.issue("hal")
    assert (await auth.http_get("/health"))[0] == 200
    assert (await auth.http_get("/ready"))[0] == 200
    status, _, body = await auth.http_get("/metrics")
    assert status == 200
    assert b'meshcast_auth_requests_total{code="OK",method="IssueConnectionToken"}' in body
    assert b'meshcast_auth_tokens_issued_total{kind="connection"}' in body
    assert (await auth.http_get("/.well-known/other"))[0] == 404


# Revocations and disconnects.


async def test_revoke_token_writes_the_jti_key_and_tells_the_gateways(start_auth: StartAuth, nc: Nats) -> None:
    auth = await start_auth()
    issued = await auth.issue("ivan")
    sub = await control_subscription(nc)
    before = int(time.time())
    reply = await auth.stub.RevokeToken(RevokeTokenRequest(jti=issued.jti, expires_at=issued.expires_at), timeout=5)

    value = await kv_value(nc, jti_key(issued.jti))
    assert before <= int(value.decode()) <= int(time.time())
    assert reply.revoked_until == int(value.decode()) + 86400
    control = await next_control(sub)
    assert control.WhichOneof("command") == "revoke_token"
    assert (control.revoke_token.jti, control.revoke_token.code, control.revoke_token.reason) == (
        issued.jti,
        3500,
        "token revoked",
    )
    # What a gateway's watch makes of the entry: this token is revoked, another is not.
    revocations = Revocations()
    revocations.apply(jti_key(issued.jti), value)
    assert revocations.revoked("ivan", issued.jti, None)
    assert not revocations.revoked("ivan", "another-jti", time.time())


async def test_revoke_user_writes_the_user_key_and_disconnects_the_user(start_auth: StartAuth, nc: Nats) -> None:
    auth = await start_auth()
    issued = await auth.issue("judy")
    sub = await control_subscription(nc)
    reply = await auth.stub.RevokeUser(RevokeUserRequest(user="judy"), timeout=5)

    value = int((await kv_value(nc, user_key("judy"))).decode())
    # Every token of the current second is revoked, so the one just issued is.
    assert value == reply.issued_before > jwt.decode(issued.token, options={"verify_signature": False})["iat"]
    assert value <= int(time.time()) + 1
    control = await next_control(sub)
    assert control.WhichOneof("command") == "disconnect"
    assert (control.disconnect.user, control.disconnect.code, control.disconnect.reason) == (
        "judy",
        3500,
        "token revoked",
    )
    revocations = Revocations()
    revocations.apply(user_key("judy"), str(value).encode())
    assert revocations.revoked("judy", issued.jti, float(value - 1))
    assert not revocations.revoked("judy", "later", float(value))


async def test_revoke_user_never_moves_the_revocation_time_back(start_auth: StartAuth, nc: Nats) -> None:
    auth = await start_auth()
    now = int(time.time())
    first = await auth.stub.RevokeUser(RevokeUserRequest(user="kim", issued_before=now - 10), timeout=5)
    assert first.issued_before == now - 10
    later = await auth.stub.RevokeUser(RevokeUserRequest(user="kim", issued_before=now - 5), timeout=5)
    earlier = await auth.stub.RevokeUser(RevokeUserRequest(user="kim", issued_before=now - 100), timeout=5)
    assert later.issued_before == earlier.issued_before == now - 5
    assert await kv_value(nc, user_key("kim")) == str(now - 5).encode()


async def test_disconnect_user_publishes_a_force_disconnect(start_auth: StartAuth, nc: Nats) -> None:
    auth = await start_auth()
    sub = await control_subscription(nc)
    await auth.stub.DisconnectUser(DisconnectUserRequest(user="leo"), timeout=5)
    await auth.stub.DisconnectUser(DisconnectUserRequest(user="mia", code=4001, reason="moved"), timeout=5)
    first, second = await next_control(sub), await next_control(sub)
    assert (first.disconnect.user, first.disconnect.code, first.disconnect.reason) == ("leo", 3503, "force disconnect")
    assert (second.disconnect.user, second.disconnect.code, second.disconnect.reason) == ("mia", 4001, "moved")


async def test_the_bucket_is_created_with_the_configured_ttl_and_updated_on_change(
    start_auth: StartAuth, shared_nats: NatsServer, nc: Nats
) -> None:
    js = nc.jetstream()
    # Auth serves at once; the bucket is made (or brought to its config) in the background.
    first = await start_auth(revocation_ttl=7200, token_max_ttl=3600)
    await wait_until_async(first.app.revocations_ready, what="the revocation bucket")
    info = await js.stream_info(f"KV_{BUCKET}")
    assert (info.config.max_age, info.config.num_replicas) == (7200, 1)
    second = await start_auth(revocation_ttl=86400)
    await wait_until_async(second.app.revocations_ready, what="the revocation bucket")
    info = await js.stream_info(f"KV_{BUCKET}")
    assert info.config.max_age == 86400


INVALID: list[tuple[str, Any, str]] = [
    ("IssueConnectionToken", IssueConnectionTokenRequest(user=""), "user is required"),
    ("IssueConnectionToken", IssueConnectionTokenRequest(user="a", ttl_seconds=-1), "ttl_seconds"),
    ("IssueConnectionToken", IssueConnectionTokenRequest(user="a", ttl_seconds=10**9), "maximum of 86400"),
    ("IssueConnectionToken", IssueConnectionTokenRequest(user="a", info_json=b"{nope"), "not valid JSON"),
    ("IssueConnectionToken", IssueConnectionTokenRequest(user="a", channels=["ok", ""]), "channels[] is required"),
    ("IssueSubscriptionToken", IssueSubscriptionTokenRequest(user="a"), "channel is required"),
    ("RevokeToken", RevokeTokenRequest(jti=""), "jti is required"),
    ("RevokeToken", RevokeTokenRequest(jti="x", expires_at=-5), "expires_at"),
    ("RevokeUser", RevokeUserRequest(user=""), "user is required"),
    ("RevokeUser", RevokeUserRequest(user="a", issued_before=int(time.time() * 1000)), "in the future"),
    ("DisconnectUser", DisconnectUserRequest(user="a", code=1000), "disconnect code"),
    ("DisconnectUser", DisconnectUserRequest(user="a", reason="x" * 124), "123 bytes"),
]


@pytest.mark.parametrize(("method", "request_message", "message"), INVALID, ids=[i[2] for i in INVALID])
async def test_invalid_arguments_answer_invalid_argument_with_the_reason(
    start_auth: StartAuth, method: str, request_message: Any, message: str
) -> None:
    auth = await start_auth()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await getattr(auth.stub, method)(request_message, timeout=5)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in failure.value.details()


async def test_revocations_answer_unavailable_while_nats_is_down_and_issuing_goes_on(
    start_auth: StartAuth, nats_server: NatsServer
) -> None:
    auth = await start_auth(nats_server.url)
    nats_server.stop()
    # The caller's deadline is far beyond the service's nats_timeout (1 s): an answer
    # of UNAVAILABLE, not DEADLINE_EXCEEDED, is the service giving up on NATS itself.
    deadline = timeout(30)
    calls: list[Any] = [
        auth.stub.RevokeToken(RevokeTokenRequest(jti="j1"), timeout=deadline),
        auth.stub.RevokeUser(RevokeUserRequest(user="nina"), timeout=deadline),
        auth.stub.DisconnectUser(DisconnectUserRequest(user="nina"), timeout=deadline),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Traceback" not in (failure.value.details() or "")
    assert (await auth.issue("nina")).token


async def test_a_bucket_deleted_while_running_is_recreated_by_the_next_revocation(
    start_auth: StartAuth, nc: Nats
) -> None:
    auth = await start_auth()
    await nc.jetstream().delete_key_value(BUCKET)
    await auth.stub.RevokeToken(RevokeTokenRequest(jti="after-delete"), timeout=5)
    assert await kv_value(nc, jti_key("after-delete"))
    await nc.jetstream().delete_key_value(BUCKET)
    reply = await auth.stub.RevokeUser(RevokeUserRequest(user="olga", issued_before=100), timeout=5)
    assert reply.issued_before == 100
    assert await kv_value(nc, user_key("olga")) == b"100"


async def test_the_service_process_serves_logs_no_secrets_and_stops_on_sigterm(
    shared_nats: NatsServer, tmp_path: Path
) -> None:
    key = private_pem(KEYS["ES256"])
    proc = auth_process(tmp_path, [shared_nats.url], secret=SECRET, extra_env={"MESHCAST_SIGNING_KEY": key})
    proc.start()
    try:
        async with keyed_channel(f"127.0.0.1:{proc.env['_GRPC_PORT']}") as channel:
            stub: Any = auth_pb2_grpc.AuthServiceStub(channel)
            reply = await stub.IssueConnectionToken(IssueConnectionTokenRequest(user="pat"), timeout=5)
            await stub.RevokeToken(RevokeTokenRequest(jti=reply.jti), timeout=5)
    finally:
        code = await asyncio.to_thread(proc.terminate)
    assert code == 0, proc.logs()[-2000:]
    logs = proc.logs()
    assert "connection token issued" in logs
    assert "auth stopped" in logs
    for secret in (reply.token, reply.token.split(".")[2], SECRET, key.splitlines()[1]):
        assert secret not in logs

"""Request rules of the auth service, and how the gRPC shell maps failures to status codes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshcast.auth import validation
from meshcast.auth.errors import InvalidArgument, Unavailable
from meshcast.auth.grpc_api import AuthServicer
from meshcast.auth.keys import load_keyring
from meshcast.auth.service import AuthService
from meshcast.auth.settings import AuthSettings
from meshcast.proto.auth_pb2 import (
    DisconnectUserRequest,
    IssueConnectionTokenRequest,
    IssueConnectionTokenResponse,
    KeysRequest,
    RevokeTokenRequest,
    RevokeUserRequest,
)
from meshcast.proto.bus_pb2 import Control

SECRET = "an-hmac-secret-of-at-least-32-bytes-0123456789"


def test_names_are_required_bounded_and_free_of_control_characters() -> None:
    assert validation.name("alice", "user") == "alice"
    for bad, reason in [("", "required"), ("x" * 1025, "longer"), ("a\nb", "control"), ("a\x00", "control")]:
        with pytest.raises(InvalidArgument, match=f"user .*{reason}"):
            validation.name(bad, "user")


def test_ttl_zero_means_default_and_is_bounded() -> None:
    assert validation.ttl(0, 3600, 86400) == 3600
    assert validation.ttl(86400, 3600, 86400) == 86400
    with pytest.raises(InvalidArgument, match="negative"):
        validation.ttl(-1, 3600, 86400)
    with pytest.raises(InvalidArgument, match="maximum of 86400"):
        validation.ttl(86401, 3600, 86400)


def test_info_is_any_json_value_within_its_size() -> None:
    assert validation.info(b"", 100) is None
    assert validation.info(b'{"a": [1, 2]}', 100) == {"a": [1, 2]}
    assert validation.info(b'"text"', 100) == "text"
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        validation.info(b"{'a': 1}", 100)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        validation.info(b"\xff\xfe", 100)
    with pytest.raises(InvalidArgument, match="larger than 4 bytes"):
        validation.info(b"[1, 2]", 4)


def test_channels_are_deduplicated_in_order_and_counted() -> None:
    assert validation.channels(["b", "a", "b"], 5) == ["b", "a"]
    with pytest.raises(InvalidArgument, match="more than 1 channels"):
        validation.channels(["a", "b"], 1)


def test_issued_before_defaults_to_the_next_whole_second() -> None:
    # iat has whole seconds: a token of this second (iat 1000) must be revoked.
    assert validation.issued_before(None, 1000.0) == 1001
    assert validation.issued_before(None, 1000.7) == 1001
    assert validation.issued_before(900, 1000.0) == 900
    assert validation.issued_before(1200, 1000.0) == 1200  # within the clock allowance
    with pytest.raises(InvalidArgument, match="in the future"):
        validation.issued_before(1_000_000, 1000.0)
    with pytest.raises(InvalidArgument, match="negative"):
        validation.issued_before(-1, 1000.0)


def test_disconnect_codes_and_reasons() -> None:
    assert validation.disconnect_code(None, 3503) == 3503
    assert validation.disconnect_code(4999, 3503) == 4999
    for bad in (0, 1000, 2999, 5000):
        with pytest.raises(InvalidArgument, match="3000-4999"):
            validation.disconnect_code(bad, 3503)
    assert validation.reason(None, "force disconnect") == "force disconnect"
    assert validation.reason("", "force disconnect") == "force disconnect"
    assert validation.reason("é" * 61, "x") == "é" * 61  # 122 bytes
    with pytest.raises(InvalidArgument, match="123 bytes"):
        validation.reason("é" * 62, "x")


class FakeRevocations:
    """In memory, for the core only (the NATS implementation is tested against NATS)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.jtis: dict[str, int] = {}
        self.users: dict[str, int] = {}
        self.controls: list[Control] = []

    @property
    def ttl(self) -> int:
        return 100

    async def revoke_jti(self, jti: str, at: int) -> None:
        if self.fail:
            raise self.fail
        self.jtis[jti] = at

    async def revoke_user(self, user: str, before: int) -> int:
        self.users[user] = max(before, self.users.get(user, 0))
        return self.users[user]

    async def publish_control(self, control: Control) -> None:
        self.controls.append(control)


class FakeContext:
    def __init__(self) -> None:
        self.code: Any = grpc.StatusCode.OK
        self.details = ""

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


def servicer(revocations: FakeRevocations, now: float = 5000.5) -> AuthServicer:
    settings = AuthSettings(token_hmac_secret=SECRET, api_key="unit-test-key")
    return AuthServicer(AuthService(settings, load_keyring(settings), revocations, clock=lambda: now))


async def test_revoke_token_stores_then_announces() -> None:
    fake = FakeRevocations()
    ctx = FakeContext()
    reply = await servicer(fake).RevokeToken(RevokeTokenRequest(jti="j"), ctx)
    assert ctx.code == grpc.StatusCode.OK
    assert fake.jtis == {"j": 5000}
    assert reply.revoked_until == 5100
    [control] = fake.controls
    assert (control.revoke_token.jti, control.revoke_token.code) == ("j", 3500)


async def test_revoke_user_reports_the_time_in_force() -> None:
    fake = FakeRevocations()
    fake.users["u"] = 7000
    reply = await servicer(fake).RevokeUser(RevokeUserRequest(user="u"), FakeContext())
    assert (reply.issued_before, reply.revoked_until) == (7000, 5100)
    reply = await servicer(fake).RevokeUser(RevokeUserRequest(user="v"), FakeContext())
    assert reply.issued_before == 5001


async def test_failures_map_to_status_codes_without_internals() -> None:
    ctx = FakeContext()
    await servicer(FakeRevocations(Unavailable("revoke token: NATS is not connected"))).RevokeToken(
        RevokeTokenRequest(jti="j"), ctx
    )
    assert (ctx.code, ctx.details) == (grpc.StatusCode.UNAVAILABLE, "NATS unavailable, retry later")

    ctx = FakeContext()
    await servicer(FakeRevocations(RuntimeError("secret detail"))).RevokeToken(RevokeTokenRequest(jti="j"), ctx)
    assert (ctx.code, ctx.details) == (grpc.StatusCode.INTERNAL, "internal error")

    ctx = FakeContext()
    reply = await servicer(FakeRevocations()).IssueConnectionToken(IssueConnectionTokenRequest(user=""), ctx)
    assert (ctx.code, ctx.details) == (grpc.StatusCode.INVALID_ARGUMENT, "user is required")
    assert reply == IssueConnectionTokenResponse()


async def test_disconnect_defaults_and_keys() -> None:
    fake = FakeRevocations()
    await servicer(fake).DisconnectUser(DisconnectUserRequest(user="u"), FakeContext())
    [control] = fake.controls
    assert (control.disconnect.user, control.disconnect.code, control.disconnect.reason) == (
        "u",
        3503,
        "force disconnect",
    )
    reply = await servicer(fake).Keys(KeysRequest(), FakeContext())
    assert reply.jwks_json == '{"keys":[]}'

"""The admin UI's routes (`meshcast.api.admin`) through `HttpApi`, as the HTTP server calls them.

Each request is screened on its head, then handled, as `http_server` does;
the method table is a small fake (what is under test is the routing, the
session and CSRF checks, and that ``/api`` routes as before).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from meshcast.api.admin import COOKIE, AdminHttp, load_assets
from meshcast.api.admin_sessions import AdminSessions, LoginLimiter
from meshcast.api.http_api import HttpApi
from meshcast.api.http_server import HttpRequest, HttpResponse
from meshcast.api.methods import Batch, Method
from meshcast.common.apikey import ApiKey
from meshcast.proto import centrifugo_api_pb2 as api

KEY = "the-api-key"
SECRET = "the-admin-secret"
CSRF = {"x-meshcast-admin": "1"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fixture:
    def __init__(self, *, admin: bool = True) -> None:
        self.clock = Clock()
        self.published: list[api.PublishRequest] = []
        methods = {
            "info": Method("info", api.InfoRequest, self._info),
            "publish": Method("publish", api.PublishRequest, self._publish),
        }
        self.admin = (
            AdminHttp(
                AdminSessions(SECRET, ttl=60.0, max_sessions=4, limiter=LoginLimiter(2, 30.0)),
                methods,
                clock=self.clock,
            )
            if admin
            else None
        )
        self.http = HttpApi(methods, Batch(methods, 10), ApiKey(KEY), self.admin)

    async def _info(self, request: api.InfoRequest) -> api.InfoResult:
        node = api.NodeResult(uid="u1", name="gateway-1", num_clients=1)
        node.metrics.items["meshcast.node.num_publications"] = 3.0
        return api.InfoResult(nodes=[node])

    async def _publish(self, request: api.PublishRequest) -> api.PublishResult:
        self.published.append(request)
        return api.PublishResult()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        heads = dict(headers or {})
        refusal = self.http.screen(method, path, heads)
        if refusal is not None:
            return refusal
        return await self.http.handle(HttpRequest(method, path, heads, body))

    async def login(self, secret: str = SECRET) -> HttpResponse:
        return await self.request("POST", "/admin/login", json.dumps({"secret": secret}).encode(), CSRF)

    async def session(self) -> dict[str, str]:
        """Headers of a logged-in browser's POST."""
        cookie = _header(await self.login(), "Set-Cookie").split(";")[0]
        return {**CSRF, "cookie": f"other=1; {cookie}"}


def _header(response: HttpResponse, name: str) -> str:
    return next(value for key, value in response.headers if key.lower() == name.lower())


def _names(response: HttpResponse) -> set[str]:
    return {key.lower() for key, _ in response.headers}


async def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    fx = Fixture()
    for path in ("/admin", "/admin/", "/admin/index.html"):
        page = await fx.request("GET", path)
        assert page.status == 200
        assert page.content_type == "text/html; charset=utf-8"
        assert b"/admin/admin.js" in page.body
        assert _header(page, "Content-Security-Policy").startswith("default-src 'self'")
        assert _header(page, "Cache-Control") == "no-cache"
        assert {"x-frame-options", "x-content-type-options"} <= _names(page)
    script = await fx.request("GET", "/admin/admin.js")
    assert script.status == 200
    assert script.content_type == "text/javascript; charset=utf-8"
    style = await fx.request("GET", "/admin/admin.css")
    assert style.status == 200
    assert style.content_type == "text/css; charset=utf-8"


def test_the_files_name_no_other_site() -> None:
    for asset in load_assets().values():
        text = asset.body.decode()
        assert "http://" not in text
        assert "https://" not in text
        assert "//cdn" not in text


async def test_unknown_admin_paths_are_404_and_files_are_get_only() -> None:
    fx = Fixture()
    for path in ("/admin/nope.js", "/admin/../api/publish", "/administrator", "/admin/api"):
        assert (await fx.request("GET", path)).status in (404, 405), path
    assert (await fx.request("GET", "/admin/nope.js")).status == 404
    refused = await fx.request("POST", "/admin", b"", CSRF)
    assert refused.status == 405
    assert _header(refused, "Allow") == "GET"


async def test_without_a_secret_the_admin_is_404_and_api_routes_as_before() -> None:
    fx = Fixture(admin=False)
    for path in ("/admin", "/admin/", "/admin/admin.js", "/admin/login"):
        assert (await fx.request("GET", path)).status == 404
        assert (await fx.request("POST", path, b"{}", CSRF)).status == 404
    assert (await fx.request("GET", "/api/publish")).status == 405
    assert (await fx.request("POST", "/api/publish", b"{}")).status == 401
    assert (await fx.request("POST", "/elsewhere", b"{}", {"x-api-key": KEY})).status == 404


async def test_the_api_routes_unchanged_with_the_admin_on() -> None:
    fx = Fixture()
    assert (await fx.request("GET", "/api/publish", b"", {"x-api-key": KEY})).status == 405
    assert (await fx.request("POST", "/api/publish", b"{}")).status == 401
    assert (await fx.request("POST", "/api/nope", b"{}", {"x-api-key": KEY})).status == 404
    ok = await fx.request("POST", "/api/publish", b'{"channel":"news","data":{}}', {"x-api-key": KEY})
    assert (ok.status, ok.body) == (200, b'{"result":{}}')


async def test_a_right_login_sets_a_strict_http_only_cookie() -> None:
    fx = Fixture()
    response = await fx.login()
    assert response.status == 200
    cookie = _header(response, "Set-Cookie")
    name, _, rest = cookie.partition("=")
    token = rest.split(";")[0]
    assert name == COOKIE
    assert len(token) >= 40
    assert SECRET not in cookie
    attributes = {part.strip() for part in cookie.split(";")[1:]}
    assert {"HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=60"} <= attributes
    assert _header(response, "Cache-Control") == "no-store"


async def test_a_wrong_secret_or_the_api_key_is_refused() -> None:
    fx = Fixture()
    for secret in ("wrong", KEY):
        response = await fx.login(secret)
        assert response.status == 401
        assert "set-cookie" not in _names(response)


async def test_failed_logins_are_rate_limited_with_retry_after() -> None:
    fx = Fixture()
    assert (await fx.login("a")).status == 401
    assert (await fx.login("b")).status == 401
    limited = await fx.login()
    assert limited.status == 429
    assert _header(limited, "Retry-After") == "30"
    fx.clock.now += 30
    assert (await fx.login()).status == 200


async def test_a_login_needs_the_csrf_header_and_a_json_body() -> None:
    fx = Fixture()
    body = json.dumps({"secret": SECRET}).encode()
    assert (await fx.request("POST", "/admin/login", body)).status == 403
    assert (await fx.request("POST", "/admin/login", body, {"x-meshcast-admin": "true"})).status == 403
    assert (await fx.request("GET", "/admin/login")).status == 405
    assert (await fx.request("POST", "/admin/login", b"secret=x", CSRF)).status == 400
    assert (await fx.request("POST", "/admin/login", b'{"secret": 1}', CSRF)).status == 400


async def test_admin_api_without_a_session_is_401_even_with_the_api_key() -> None:
    fx = Fixture()
    assert (await fx.request("POST", "/admin/api/info", b"{}", CSRF)).status == 401
    assert (await fx.request("POST", "/admin/api/info", b"{}", {**CSRF, "x-api-key": KEY})).status == 401
    forged = {**CSRF, "cookie": f"{COOKIE}=forged"}
    assert (await fx.request("POST", "/admin/api/info", b"{}", forged)).status == 401


async def test_admin_api_runs_the_method_table_with_the_session() -> None:
    fx = Fixture()
    headers = await fx.session()
    info = await fx.request("POST", "/admin/api/info", b"", headers)
    assert info.status == 200
    assert info.content_type == "application/json"
    node = json.loads(info.body)["result"]["nodes"][0]
    assert node["name"] == "gateway-1"
    assert node["metrics"]["items"] == {"meshcast.node.num_publications": 3.0}
    published = await fx.request("POST", "/admin/api/publish", b'{"channel":"chat:a","data":{"x":1}}', headers)
    assert json.loads(published.body) == {"result": {}}
    assert [p.channel for p in fx.published] == ["chat:a"]
    assert (await fx.request("POST", "/admin/api/batch", b"{}", headers)).status == 404
    assert (await fx.request("POST", "/admin/api/info", b"[", headers)).status == 400


async def test_admin_api_posts_need_the_csrf_header_even_with_a_session() -> None:
    fx = Fixture()
    headers = await fx.session()
    without = {"cookie": headers["cookie"]}
    assert (await fx.request("POST", "/admin/api/publish", b'{"channel":"a"}', without)).status == 403
    assert (await fx.request("GET", "/admin/api/info", b"", headers)).status == 405
    assert fx.published == []


async def test_logout_and_expiry_end_the_session() -> None:
    fx = Fixture()
    headers = await fx.session()
    out = await fx.request("POST", "/admin/logout", b"", headers)
    assert out.status == 200
    assert "Max-Age=0" in _header(out, "Set-Cookie")
    assert (await fx.request("POST", "/admin/api/info", b"", headers)).status == 401
    headers = await fx.session()
    fx.clock.now += 60
    assert (await fx.request("POST", "/admin/api/info", b"", headers)).status == 401


@pytest.mark.parametrize("path", ["/admin/api/info", "/admin/login"])
async def test_refusals_carry_the_security_headers(path: str) -> None:
    fx = Fixture()
    refused = await fx.request("POST", path, b"{}")
    assert refused.status == 403
    assert "content-security-policy" in _names(refused)

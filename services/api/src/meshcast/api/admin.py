"""The admin UI's routes under ``/admin``, beside ``/api`` on the API's HTTP server.

- ``GET /admin`` (and ``/admin/``) the page, ``GET /admin/<file>`` its script
  and style sheet: the files of the package folder ``admin/``, read once at
  start, with ``Cache-Control: no-cache`` (an upgrade's files are seen at the
  next load); nothing else is served, no URL outside the service is named.
- ``POST /admin/login`` with ``{"secret": ...}``: 200 ``{}`` and an HttpOnly,
  SameSite=Strict session cookie (`admin_sessions`); 401 for a wrong secret,
  429 with ``Retry-After`` while failed logins are limited.
- ``POST /admin/logout``: the session ends, the cookie is cleared (200 ``{}``).
- ``POST /admin/api/<method>``: the method table (`methods.call`), as
  ``/api/<method>`` runs it, with the session cookie in place of the API key;
  401 without a live session, 404 for an unknown method.

CSRF: every POST must carry ``X-Meshcast-Admin: 1`` (403 otherwise), a header
a cross-site form cannot send and a cross-site ``fetch`` cannot send without a
CORS preflight that is never granted; the cookie is SameSite=Strict besides.
Every answer carries a strict Content-Security-Policy (``default-src 'self'``),
``X-Frame-Options: DENY`` and ``nosniff``; the API key is never involved. The
refusals (403, 401, 404, 405) are made on the request's head (`screen`), before
its body is read. Sessions live in one replica's memory: behind a load balancer
keep the admin on one replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

import structlog

from meshcast.proto import centrifugo_api_pb2 as api

from .admin_sessions import AdminSessions, Verdict
from .codec import DecodeFailed, decode_request, dumps, encode_message, parse_body
from .http_server import HttpRequest, HttpResponse
from .methods import Method, call

log = structlog.get_logger(__name__)

PREFIX = "/admin"
COOKIE = "meshcast_admin"
# The header every POST must carry (CSRF): its name in lower case, and its value.
CSRF_HEADER = "x-meshcast-admin"
CSRF_VALUE = "1"
_API = "/admin/api/"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
_NO_STORE = (*SECURITY_HEADERS, ("Cache-Control", "no-store"))
_ASSET_HEADERS = (*SECURITY_HEADERS, ("Cache-Control", "no-cache"))
JSON = "application/json"


def _plain(status: int, *extra: tuple[str, str]) -> HttpResponse:
    return HttpResponse(status, headers=(*_NO_STORE, *extra))


_NOT_FOUND = _plain(404)
_FORBIDDEN = _plain(403)
_UNAUTHORIZED = _plain(401)
_BAD = _plain(400)
_GET_ONLY = _plain(405, ("Allow", "GET"))
_POST_ONLY = _plain(405, ("Allow", "POST"))


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> dict[str, Asset]:
    """The package's ``admin/`` files by URL path; the page also at ``/admin`` and ``/admin/``."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("meshcast.api").joinpath("admin").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _CONTENT_TYPES:
            continue
        assets[f"{PREFIX}/{entry.name}"] = Asset(entry.read_bytes(), _CONTENT_TYPES[suffix])
    page = assets[f"{PREFIX}/index.html"]
    assets[PREFIX] = assets[f"{PREFIX}/"] = page
    return assets


def session_token(headers: Mapping[str, str]) -> str:
    """The session cookie's value in a ``Cookie`` header ('' when none)."""
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value.strip()
    return ""


class AdminHttp:
    """The ``/admin`` routes of `http_api.HttpApi` (which hands it every path under ``/admin``)."""

    def __init__(
        self,
        sessions: AdminSessions,
        methods: dict[str, Method],
        *,
        cookie_secure: bool = False,
        assets: dict[str, Asset] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._methods = methods
        self._assets = load_assets() if assets is None else assets
        self._clock = clock
        self._cookie_attrs = "; Path=/admin; HttpOnly; SameSite=Strict" + ("; Secure" if cookie_secure else "")

    def screen(self, method: str, path: str, headers: Mapping[str, str]) -> HttpResponse | None:
        if path in self._assets:
            return None if method == "GET" else _GET_ONLY
        if path in ("/admin/login", "/admin/logout"):
            return self._screen_post(method, headers)
        if path.startswith(_API):
            refusal = self._screen_post(method, headers)
            if refusal is not None:
                return refusal
            if not self._sessions.valid(session_token(headers), self._clock()):
                return _UNAUTHORIZED
            return None if path[len(_API) :] in self._methods else _NOT_FOUND
        return _NOT_FOUND

    @staticmethod
    def _screen_post(method: str, headers: Mapping[str, str]) -> HttpResponse | None:
        if method != "POST":
            return _POST_ONLY
        if headers.get(CSRF_HEADER) != CSRF_VALUE:
            return _FORBIDDEN
        return None

    async def handle(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        asset = self._assets.get(path)
        if asset is not None:
            return HttpResponse(200, asset.body, asset.content_type, _ASSET_HEADERS)
        if path == "/admin/login":
            return self._login(request.body)
        if path == "/admin/logout":
            self._sessions.logout(session_token(request.headers))
            return self._done(f"{COOKIE}={self._cookie_attrs}; Max-Age=0")
        if not self._sessions.valid(session_token(request.headers), self._clock()):
            return _UNAUTHORIZED  # expired since its head was screened
        return await self._call(self._methods[path[len(_API) :]], request.body)

    def _login(self, body: bytes) -> HttpResponse:
        try:
            form = parse_body(body)
        except DecodeFailed:
            return _BAD
        secret = form.get("secret") if isinstance(form, dict) else None
        if not isinstance(secret, str):
            return _BAD
        outcome = self._sessions.login(secret, self._clock())
        if outcome.verdict is Verdict.LIMITED:
            log.warning("admin login refused: too many failed logins", retry_after=round(outcome.retry_after, 1))
            return _plain(429, ("Retry-After", str(max(1, math.ceil(outcome.retry_after)))))
        if outcome.verdict is Verdict.REFUSED:
            log.warning("admin login refused: wrong secret")
            return _UNAUTHORIZED
        log.info("admin login", sessions=len(self._sessions))
        max_age = int(self._sessions.ttl)
        return self._done(f"{COOKIE}={outcome.token}{self._cookie_attrs}; Max-Age={max_age}")

    @staticmethod
    def _done(cookie: str) -> HttpResponse:
        return HttpResponse(200, b"{}", JSON, (*_NO_STORE, ("Set-Cookie", cookie)))

    async def _call(self, method: Method, body: bytes) -> HttpResponse:
        try:
            message = decode_request(parse_body(body) if body.strip() else {}, method.request())
        except DecodeFailed:
            return _BAD
        outcome = await call(method, message)
        if isinstance(outcome, api.Error):
            reply: dict[str, object] = {"error": {"code": outcome.code, "message": outcome.message}}
        else:
            reply = {"result": encode_message(outcome)}
        return HttpResponse(200, dumps(reply), JSON, _NO_STORE)

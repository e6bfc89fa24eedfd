"""The HTTP shell: ``POST /api/<method>`` with a JSON body, as Centrifugo's HTTP API.

- the key in ``X-API-Key: <key>`` or ``Authorization: apikey <key>``,
  compared in constant time; missing or wrong: 401 with an empty body;
- not POST: 405; an unknown method: 404; a body over the limit: 413 (all
  answered on the request's head, before its body is read: see `http_server`);
  a body that is not JSON of the method's request: 400 (all empty bodies);
- otherwise 200 with ``{"result": ...}`` or ``{"error": {"code", "message"}}``;
  ``batch`` answers ``{"replies": [...]}``, as Centrifugo does.

``POST /api`` takes Centrifugo's legacy commands (still served by Centrifugo
v6, and the only batch of clients such as cent.js's ``pipeline()``): one JSON
object ``{"method", "params"}`` per line, run in order, answered with one
``{"result"}`` or ``{"error"}`` line each (107 for params that do not fit the
method); a body that is not such lines, an unknown method, or more commands
than ``api_max_batch``: 400. An empty body for ``/api/<method>``: 400.

Paths under ``/admin`` go to the admin UI (`admin.AdminHttp`) when it is on,
routed after the ``/api`` checks so that a publish costs what it did; the
only paths answered to a method other than POST.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from meshcast.common.apikey import ApiKey, from_authorization
from meshcast.proto import centrifugo_api_pb2 as api
from meshcast.protocol import ErrorCode

from .admin import PREFIX as ADMIN_PREFIX
from .admin import AdminHttp
from .codec import DecodeFailed, decode_request, dumps, encode_message, parse_body
from .errors import ApiError
from .http_server import HttpRequest, HttpResponse
from .methods import Batch, Method, call

log = structlog.get_logger(__name__)

JSON = "application/json"
_PREFIX = "/api/"
_NOT_POST = HttpResponse(405, headers=(("Allow", "POST"),))
_UNAUTHORIZED = HttpResponse(401)
_NOT_FOUND = HttpResponse(404)
_BAD = HttpResponse(400)
_PUBLISHED = HttpResponse(200, b'{"result":{}}', JSON)


def _error(code: ErrorCode) -> dict[str, object]:
    return {"error": {"code": int(code), "message": code.message}}


def presented_key(headers: Mapping[str, str]) -> str:
    """The key the caller sent, in either header form ('' when none); names in lower case."""
    key = headers.get("x-api-key")
    if key:
        return key
    return from_authorization(headers.get("authorization", ""))


class HttpApi:
    """The routes of `http_server.HttpServer`: ``/api/<method>`` and the legacy ``/api``."""

    def __init__(self, methods: dict[str, Method], batch: Batch, key: ApiKey, admin: AdminHttp | None = None) -> None:
        self._methods = methods
        self._batch = batch
        self._key = key
        self._admin = admin

    def _route(self, path: str) -> str | None:
        """The method a path names ('' for the legacy ``/api``), None for no route."""
        if path == "/api":
            return ""
        if path.startswith(_PREFIX):
            name = path[len(_PREFIX) :]
            if name == "batch" or name in self._methods:
                return name
        return None

    def screen(self, method: str, path: str, headers: Mapping[str, str]) -> HttpResponse | None:
        """Refusals on the head alone, in Centrifugo's order: 405, 401, then 404."""
        if path != "/api" and not path.startswith(_PREFIX):
            if self._admin is not None and path.startswith(ADMIN_PREFIX):
                return self._admin.screen(method, path, headers)
            return _NOT_FOUND
        if method != "POST":
            return _NOT_POST
        if not self._key.admits(presented_key(headers)):
            return _UNAUTHORIZED
        if self._route(path) is None:
            return _NOT_FOUND
        return None

    async def handle(self, request: HttpRequest) -> HttpResponse:
        name = self._route(request.path)
        if name is None:
            if self._admin is not None and request.path.startswith(ADMIN_PREFIX):
                return await self._admin.handle(request)
            return _NOT_FOUND
        if name == "":
            return await self._handle_legacy(request.body)
        try:
            params = parse_body(request.body)
            if name == "batch":
                return await self._run_batch(decode_request(params, api.BatchRequest()))
            method = self._methods[name]
            message = decode_request(params, method.request())
        except DecodeFailed:
            return _BAD
        outcome = await call(method, message)
        if isinstance(outcome, api.Error):
            return self._json({"error": {"code": outcome.code, "message": outcome.message}})
        if type(outcome) is api.PublishResult and not outcome.ByteSize():
            return _PUBLISHED  # a publish without history, the hot path
        return self._json({"result": encode_message(outcome)})

    async def _handle_legacy(self, body: bytes) -> HttpResponse:
        try:
            commands = [parse_body(line) for line in body.splitlines() if line.strip()]
        except DecodeFailed:
            return _BAD
        if len(commands) > self._batch.max_commands or not all(
            isinstance(c, dict) and str(c.get("method", "")) in self._methods for c in commands
        ):
            return _BAD  # as Centrifugo: an unknown method refuses the whole request
        lines = [dumps(await self._legacy_one(command)) for command in commands]
        return HttpResponse(200, b"\n".join(lines), JSON)

    async def _legacy_one(self, command: dict[str, object]) -> dict[str, object]:
        method = self._methods[str(command.get("method", ""))]
        try:
            message = decode_request(command.get("params", {}), method.request())
        except DecodeFailed:
            return _error(ErrorCode.BAD_REQUEST)
        outcome = await call(method, message)
        if isinstance(outcome, api.Error):
            return {"error": {"code": outcome.code, "message": outcome.message}}
        return {"result": encode_message(outcome)}

    async def _run_batch(self, batch: api.BatchRequest) -> HttpResponse:
        try:
            replies = await self._batch.run(batch)
        except ApiError as err:
            return self._json({"error": {"code": err.code, "message": err.message}})
        return self._json(encode_message(replies))

    @staticmethod
    def _json(value: object) -> HttpResponse:
        return HttpResponse(200, dumps(value), JSON)

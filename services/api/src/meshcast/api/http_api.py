"""The HTTP shell: ``POST /api/<method>`` with a JSON body, as Centrifugo's HTTP API.

- the key in ``X-API-Key: <key>`` or ``Authorization: apikey <key>``,
  compared in constant time; missing or wrong: 401 with an empty body;
- not POST: 405; an unknown method: 404; a body over the limit: 413;
  a body that is not JSON of the method's request: 400 (all empty bodies);
- otherwise 200 with ``{"result": ...}`` or ``{"error": {"code", "message"}}``;
  ``batch`` answers ``{"replies": [...]}``, as Centrifugo does.

``POST /api`` takes Centrifugo's legacy commands (still served by Centrifugo
v6, and the only batch of clients such as cent.js's ``pipeline()``): one JSON
object ``{"method", "params"}`` per line, run in order, answered with one
``{"result"}`` or ``{"error"}`` line each (107 for params that do not fit the
method); a body that is not such lines, an unknown method, or more commands
than ``api_max_batch``: 400. An empty body for ``/api/<method>``: 400.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from meshcast.common.apikey import ApiKey, from_authorization
from meshcast.proto import centrifugo_api_pb2 as api
from meshcast.protocol import ErrorCode

from .codec import DecodeFailed, decode_request, dumps, encode_message, parse_body
from .errors import ApiError
from .methods import Batch, Method, call

log = structlog.get_logger(__name__)

JSON = "application/json"


def _empty(status: int) -> web.Response:
    return web.Response(status=status, body=b"")


def _error(code: ErrorCode) -> dict[str, object]:
    return {"error": {"code": int(code), "message": code.message}}


def presented_key(request: web.Request) -> str:
    """The key the caller sent, in either header form ('' when none)."""
    key = request.headers.get("X-API-Key")
    if key:
        return key
    return from_authorization(request.headers.get("Authorization", ""))


class HttpApi:
    def __init__(self, methods: dict[str, Method], batch: Batch, key: ApiKey, max_body: int) -> None:
        self._methods = methods
        self._batch = batch
        self._key = key
        self._max_body = max_body

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/api/{method}", self.handle)
        app.router.add_route("*", "/api", self.handle_legacy)
        return app

    async def _body(self, request: web.Request, known: bool = True) -> bytes | web.Response:
        """The request's body, or the empty-bodied refusal (405, 401, 404, 413)."""
        if request.method != "POST":
            return _empty(405)
        if not self._key.admits(presented_key(request)):
            return _empty(401)
        if not known:
            return _empty(404)
        if request.content_length is not None and request.content_length > self._max_body:
            return _empty(413)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _empty(413)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["method"]
        body = await self._body(request, known=name == "batch" or name in self._methods)
        if isinstance(body, web.Response):
            return body
        try:
            params = parse_body(body)
            if name == "batch":
                return await self._run_batch(decode_request(params, api.BatchRequest()))
            method = self._methods[name]
            message = decode_request(params, method.request())
        except DecodeFailed:
            return _empty(400)
        outcome = await call(method, message)
        if isinstance(outcome, api.Error):
            return self._json({"error": {"code": outcome.code, "message": outcome.message}})
        return self._json({"result": encode_message(outcome)})

    async def handle_legacy(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        try:
            commands = [parse_body(line) for line in body.splitlines() if line.strip()]
        except DecodeFailed:
            return _empty(400)
        if len(commands) > self._batch.max_commands or not all(
            isinstance(c, dict) and str(c.get("method", "")) in self._methods for c in commands
        ):
            return _empty(400)  # as Centrifugo: an unknown method refuses the whole request
        lines = [dumps(await self._legacy_one(command)) for command in commands]
        return web.Response(status=200, body=b"\n".join(lines), content_type=JSON)

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

    async def _run_batch(self, batch: api.BatchRequest) -> web.Response:
        try:
            replies = await self._batch.run(batch)
        except ApiError as err:
            return self._json({"error": {"code": err.code, "message": err.message}})
        return self._json(encode_message(replies))

    @staticmethod
    def _json(value: object) -> web.Response:
        return web.Response(status=200, body=dumps(value), content_type=JSON)

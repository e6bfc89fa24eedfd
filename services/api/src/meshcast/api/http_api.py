"""The HTTP shell: ``POST /api/<method>`` with a JSON body, as Centrifugo's HTTP API.

- the key in ``X-API-Key: <key>`` or ``Authorization: apikey <key>``,
  compared in constant time; missing or wrong: 401 with an empty body;
- not POST: 405; an unknown method: 404; a body over the limit: 413;
  a body that is not JSON of the method's request: 400 (all empty bodies);
- otherwise 200 with ``{"result": ...}`` or ``{"error": {"code", "message"}}``;
  ``batch`` answers ``{"replies": [...]}``, as Centrifugo does.
"""

from __future__ import annotations

import hmac

import structlog
from aiohttp import web

from meshcast.proto import centrifugo_api_pb2 as api

from .codec import DecodeFailed, decode_request, dumps, encode_message, parse_body
from .errors import ApiError
from .methods import Batch, Method, call

log = structlog.get_logger(__name__)

JSON = "application/json"


def _empty(status: int) -> web.Response:
    return web.Response(status=status, body=b"")


def presented_key(request: web.Request) -> str:
    """The key the caller sent, in either header form ('' when none)."""
    key = request.headers.get("X-API-Key")
    if key:
        return key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "apikey" else ""


class HttpApi:
    def __init__(self, methods: dict[str, Method], batch: Batch, key: str, max_body: int) -> None:
        self._methods = methods
        self._batch = batch
        self._key = key.encode()
        self._max_body = max_body

    def authorized(self, presented: str) -> bool:
        if not self._key:
            return True  # MESHCAST_API_INSECURE=true
        return hmac.compare_digest(presented.encode(), self._key)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/api/{method}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _empty(405)
        if not self.authorized(presented_key(request)):
            return _empty(401)
        name = request.match_info["method"]
        if name != "batch" and name not in self._methods:
            return _empty(404)
        if request.content_length is not None and request.content_length > self._max_body:
            return _empty(413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _empty(413)
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

    async def _run_batch(self, batch: api.BatchRequest) -> web.Response:
        try:
            replies = await self._batch.run(batch)
        except ApiError as err:
            return self._json({"error": {"code": err.code, "message": err.message}})
        return self._json(encode_message(replies))

    @staticmethod
    def _json(value: object) -> web.Response:
        return web.Response(status=200, body=dumps(value), content_type=JSON)

"""`Backend`: one backend service on NATS, its handlers and its calls.

>>> app = Backend("nats://backend:pw@127.0.0.1:4222", name="chat-bot")
>>> @app.rpc("who")
... async def who(request: RPCRequest) -> bytes: ...
>>> app.run()

Every handler listens in the queue group named `name`, so the replicas of
one backend share the work and each request is answered once. A handler
answers only reply subjects that are inboxes (``meshcast.bus.requests.is_inbox``):
answering anything else would publish with this backend's permissions where
the requester chose. Concurrent requests run concurrently, at most
`max_concurrency` at a time; each is bounded by `handler_timeout` (keep it
under the gateways' ``MESHCAST_PROXY_TIMEOUT``, 3 s by default).

`stop` (SIGTERM or SIGINT under `run`) drains: the subscriptions stop taking
requests, the requests and events in hand finish (at most `drain_timeout`),
then the connection is drained and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import urlsplit

import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import AuthorizationError
from nats.errors import Error as NatsError

from meshcast.bus import Subjects, close, connect, subscriptions_applied
from meshcast.bus.requests import is_inbox

from . import calls
from .dispatch import CONNECT, PUBLISH, REFRESH, RPC, SUBSCRIBE, Decision, answer
from .errors import BackendError, Unavailable
from .events import ConsumerOptions, EventConsumer, EventHandler, check_kinds
from .permissions import Violations
from .types import (
    ClientInfo,
    Connect,
    ConnectRequest,
    HistoryPage,
    PresenceStats,
    Publish,
    PublishRequest,
    Refresh,
    RefreshRequest,
    RPCRequest,
    Subscribe,
    SubscribeRequest,
)

log = structlog.get_logger("meshcast.backend")

# A name is a queue group and the stem of durable consumer names: one plain token.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_URL: Final = "nats://127.0.0.1:4222"

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])
ConnectHandler = Callable[[ConnectRequest], Awaitable[Connect]]
RefreshHandler = Callable[[RefreshRequest], Awaitable[Refresh]]
SubscribeHandler = Callable[[SubscribeRequest], Awaitable[Subscribe | None]]
PublishHandler = Callable[[PublishRequest], Awaitable[Publish | None]]
RPCHandler = Callable[[RPCRequest], Awaitable[bytes | None]]
CH = TypeVar("CH", bound=ConnectHandler)
RH = TypeVar("RH", bound=RefreshHandler)
SH = TypeVar("SH", bound=SubscribeHandler)
PH = TypeVar("PH", bound=PublishHandler)
XH = TypeVar("XH", bound=RPCHandler)
EH = TypeVar("EH", bound=EventHandler)


def default_inbox_prefix(servers: str | Sequence[str], user: str | None) -> str | None:
    """``_INBOX_<user>`` for a user named in the URL or given (each NATS user of
    ``meshcast.common.natsauth`` may read its own inboxes only); None otherwise."""
    if user is None:
        first = servers if isinstance(servers, str) else (servers[0] if servers else "")
        user = urlsplit(first.split(",")[0].strip()).username
    return f"_INBOX_{user}" if user else None


class Backend:
    """A backend service: decorators register handlers, `start`/`run` serve them."""

    def __init__(
        self,
        nats_url: str | Sequence[str] = DEFAULT_URL,
        *,
        name: str,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds: str | None = None,
        inbox_prefix: str | None = None,
        subject_prefix: str = "meshcast",
        history_namespaces: Sequence[str] = (),
        handler_timeout: float = 2.5,
        request_timeout: float = 5.0,
        drain_timeout: float = 10.0,
        max_concurrency: int = 100,
    ) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"a backend name is 1-64 letters, digits, '-' or '_': {name!r}")
        self.name = name
        self.subjects = Subjects(subject_prefix)
        self._servers = nats_url
        self._user, self._password, self._token, self._creds = user, password, token, creds
        self._inbox_prefix = inbox_prefix or default_inbox_prefix(nats_url, user)
        self._history_namespaces = frozenset(history_namespaces)
        self.handler_timeout = handler_timeout
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self._slots = asyncio.Semaphore(max_concurrency)
        self._decisions: dict[str, tuple[Decision[Any], Callable[[Any], Awaitable[Any]]]] = {}
        self._event_handlers: list[tuple[str, tuple[str, ...], EventHandler, ConsumerOptions]] = []
        self._consumers: list[EventConsumer] = []
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._violations = Violations()
        self._bus: calls.Bus | None = None
        self._closed = asyncio.Event()
        self._stopping = False

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None, **options: Any) -> Backend:
        """A backend configured as the services are: ``MESHCAST_NATS_URL`` (credentials in it, or
        ``MESHCAST_NATS_USER``/``_PASSWORD``, ``MESHCAST_NATS_TOKEN``, ``MESHCAST_NATS_CREDS``: a
        .creds file), ``MESHCAST_NATS_INBOX_PREFIX``, ``MESHCAST_SUBJECT_PREFIX``; `options` win."""
        env = os.environ if environ is None else environ
        read = {
            "nats_url": env.get("MESHCAST_NATS_URL") or DEFAULT_URL,
            "user": env.get("MESHCAST_NATS_USER") or None,
            "password": env.get("MESHCAST_NATS_PASSWORD") or None,
            "token": env.get("MESHCAST_NATS_TOKEN") or None,
            "creds": env.get("MESHCAST_NATS_CREDS") or None,
            "inbox_prefix": env.get("MESHCAST_NATS_INBOX_PREFIX") or None,
            "subject_prefix": env.get("MESHCAST_SUBJECT_PREFIX") or "meshcast",
        }
        return cls(name=name, **{**read, **options})

    # -- registering handlers ------------------------------------------------------

    def _register(self, key: str, decision: Decision[Any], handler: Callable[[Any], Awaitable[Any]]) -> None:
        if self._bus is not None:
            raise RuntimeError("register handlers before start()")
        if key in self._decisions:
            raise ValueError(f"a handler for {key} is already registered")
        self._decisions[key] = (decision, handler)

    def on_connect(self, handler: CH) -> CH:
        """Decide connects without a token (gateways with ``MESHCAST_PROXY_CONNECT=true``)."""
        self._register(self.subjects.proxy("connect"), CONNECT, handler)
        return handler

    def on_refresh(self, handler: RH) -> RH:
        """Extend proxied connections (gateways with ``MESHCAST_PROXY_REFRESH=true``)."""
        self._register(self.subjects.proxy("refresh"), REFRESH, handler)
        return handler

    def on_subscribe(self, handler: SH) -> SH:
        """Decide subscribes in namespaces with ``proxy_subscribe: true``."""
        self._register(self.subjects.proxy("subscribe"), SUBSCRIBE, handler)
        return handler

    def on_publish(self, handler: PH) -> PH:
        """Decide (and may rewrite) publications in namespaces with ``proxy_publish: true``."""
        self._register(self.subjects.proxy("publish"), PUBLISH, handler)
        return handler

    def rpc(self, method: str) -> Callable[[XH], XH]:
        """Answer clients' ``rpc`` calls to `method`; the handler returns the reply's data."""
        subject = self.subjects.rpc(method)

        def register(handler: XH) -> XH:
            self._register(subject, RPC, handler)
            return handler

        return register

    def on_event(
        self,
        *kinds: str,
        durable: str | None = None,
        deliver: str = "new",
        timeout: float = 30.0,
        max_ack_pending: int = 1,
        max_deliver: int = 5,
        retry_delay: float = 1.0,
    ) -> Callable[[EH], EH]:
        """Handle lifecycle events of `kinds` (``"connect"``, ``"disconnect"``, ``"subscribe"``...)
        from a durable consumer, `durable` (default ``<name>-<kinds>``); see ``meshcast.backend.events``."""
        name = durable or "-".join((self.name, *kinds))
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid durable consumer name {name!r}")
        if any(durable_name == name for durable_name, *_ in self._event_handlers):
            raise ValueError(f"durable consumer {name!r} is already registered")

        check_kinds(kinds, deliver)

        def register(handler: EH) -> EH:
            if self._bus is not None:
                raise RuntimeError("register handlers before start()")
            options = ConsumerOptions(deliver, timeout, max_ack_pending, max_deliver, retry_delay)
            self._event_handlers.append((name, kinds, handler, options))
            return handler

        return register

    # -- running -----------------------------------------------------------------

    @property
    def nc(self) -> Nats:
        """The NATS connection (after `start`), for what the SDK does not wrap."""
        return self._connected().nc

    def _connected(self) -> calls.Bus:
        if self._bus is None:
            raise RuntimeError("the backend is not started")
        return self._bus

    async def start(self) -> None:
        """Connect, subscribe every handler, bind every event consumer.

        PermissionDenied (naming the subject) when NATS refuses one; BackendError
        when NATS refuses the credentials or cannot be reached."""
        if self._bus is not None:
            raise RuntimeError("the backend is started already")
        nc = await self._connect()
        self._bus = bus = calls.Bus(
            nc, self.subjects, self._violations, self.request_timeout, history_namespaces=self._history_namespaces
        )
        self._consumers = [
            EventConsumer(bus, durable, kinds, handler, options)
            for durable, kinds, handler, options in self._event_handlers
        ]
        try:
            for subject, (decision, handler) in self._decisions.items():
                cb = self._callback(decision, handler)
                self._subs.append(await nc.subscribe(subject, queue=self.name, cb=cb))
            await asyncio.wait_for(subscriptions_applied(nc), self.request_timeout)
            for subject in self._decisions:
                self._violations.check("subscribe", subject, what=f"handler of {self.name!r}")
            for consumer in self._consumers:
                await consumer.start()
        except BaseException:
            await self._abort()
            raise
        log.info(
            "backend started",
            name=self.name,
            handlers=sorted(self._decisions),
            consumers=[c.durable for c in self._consumers],
        )

    async def _connect(self) -> Nats:
        async def on_error(exc: Exception) -> None:
            violation = self._violations.record(str(exc))
            if violation is not None:
                log.error(
                    "nats permissions refused", operation=violation.operation, subject=violation.subject, name=self.name
                )
            else:
                log.warning("nats error", error=str(exc) or type(exc).__name__)

        async def on_disconnected() -> None:
            if not self._stopping:
                log.warning("nats disconnected; reconnecting", name=self.name)

        async def on_reconnected() -> None:
            log.info("nats reconnected", name=self.name)

        try:
            nc = await connect(
                self._servers,
                name=self.name,
                connect_timeout=self.request_timeout,
                inbox_prefix=self._inbox_prefix,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                # Closed for good (not merely reconnecting): `serve` ends, so a supervisor restarts us.
                closed_cb=self._on_closed,
                user=self._user,
                password=self._password,
                token=self._token,
                user_credentials=self._creds,
            )
        except AuthorizationError as exc:
            raise BackendError(f"NATS refused the credentials of {self.name!r} ({_safe(self._servers)})") from exc
        except (NatsError, OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot connect to NATS at {_safe(self._servers)}: {exc!r}") from exc
        return nc

    async def _on_closed(self) -> None:
        self._closed.set()

    def _callback(self, decision: Decision[Any], handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Msg], Any]:
        async def received(msg: Msg) -> None:
            if not msg.reply or not is_inbox(msg.reply):
                log.warning("request without an inbox reply subject refused", subject=msg.subject)
                return
            await self._slots.acquire()
            task = asyncio.create_task(self._respond(decision, handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        return received

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _respond(self, decision: Decision[Any], handler: Callable[[Any], Awaitable[Any]], msg: Msg) -> None:
        reply = await answer(decision, handler, msg.data, time_limit=self.handler_timeout)
        try:
            await msg.respond(reply)
        except calls.NATS_FAILURES as exc:
            log.warning("reply not sent", kind=decision.kind, error=repr(exc))

    async def stop(self) -> None:
        """Drain: stop taking requests, finish those in hand, stop the consumers, close NATS."""
        if self._bus is None or self._stopping:
            return
        self._stopping = True
        for sub in self._subs:
            with contextlib.suppress(*calls.NATS_FAILURES):
                await asyncio.wait_for(sub.drain(), self.drain_timeout)  # type: ignore[no-untyped-call]
        await asyncio.gather(*(c.stop(self.drain_timeout) for c in self._consumers))
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
            for task in late:
                log.warning("handler still running at stop, cancelled", task=task.get_name())
                task.cancel()
        await close(self._bus.nc, self.drain_timeout)
        log.info("backend stopped", name=self.name)

    async def _abort(self) -> None:
        """Undo a failed start."""
        self._stopping = True
        for consumer in self._consumers:
            await consumer.stop(0)
        if self._bus is not None:
            with contextlib.suppress(*calls.NATS_FAILURES):
                await self._bus.nc.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.stop()

    async def serve(self) -> None:
        """Start, run until SIGTERM or SIGINT, stop; Unavailable if NATS closes for good first."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            closed = asyncio.ensure_future(self._closed.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            stopped.cancel()
            if self._closed.is_set() and not stop.is_set():
                raise Unavailable("the NATS connection closed for good")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    def run(self) -> None:
        """`serve` in a new event loop; a `BackendError` is logged and exits with status 1."""
        try:
            asyncio.run(self.serve())
        except BackendError as exc:
            log.error("backend failed", name=self.name, error=str(exc))
            raise SystemExit(1) from None

    # -- calls ---------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        history: bool | None = None,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> int:
        """Publish `data` to `channel` on every gateway: its offset once stored in a namespace with
        history (`history`, default: the namespace is in `history_namespaces`), else 0 once NATS has it."""
        return await calls.publish(
            self._connected(), channel, data, history=history, idempotency_key=idempotency_key, tags=tags
        )

    async def broadcast(
        self, channels: Sequence[str], data: bytes, *, history: bool | None = None, tags: dict[str, str] | None = None
    ) -> list[int | Exception]:
        """`publish` to each channel at once: per channel its offset, or what it raised."""
        return await calls.broadcast(self._connected(), channels, data, history=history, tags=tags)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Every client in `channel` (a namespace with presence), by client id."""
        return await calls.presence(self._connected(), channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        return await calls.presence_stats(self._connected(), channel)

    async def history(
        self, channel: str, *, limit: int = -1, since: tuple[int, str] | None = None, reverse: bool = False
    ) -> HistoryPage:
        """`channel`'s stored publications (`limit` -1: all retained; 0: the position only)."""
        return await calls.history(self._connected(), channel, limit=limit, since=since, reverse=reverse)

    async def disconnect(
        self, user: str, *, client: str = "", code: int = 0, reason: str = "", whitelist: Sequence[str] = ()
    ) -> None:
        """Close `user`'s connections (one `client` only, if given) on every gateway."""
        command = calls.disconnect_command(user, client, code, reason, whitelist)
        await calls.control(self._connected(), command, f"disconnect {user!r}")

    async def subscribe_user(
        self, user: str, channel: str, *, client: str = "", info: bytes = b"", data: bytes = b"", expire_at: int = 0
    ) -> None:
        """Subscribe `user`'s connections (one `client` only, if given) to `channel`, server-side."""
        command = calls.subscribe_command(user, channel, client, info, data, expire_at)
        await calls.control(self._connected(), command, f"subscribe {user!r} to {channel!r}")

    async def unsubscribe_user(self, user: str, channel: str, *, client: str = "") -> None:
        command = calls.unsubscribe_command(user, channel, client)
        await calls.control(self._connected(), command, f"unsubscribe {user!r} from {channel!r}")


def _safe(servers: str | Sequence[str]) -> str:
    """The server URLs without their passwords, for messages."""
    urls = servers.split(",") if isinstance(servers, str) else list(servers)
    out = []
    for url in urls:
        parts = urlsplit(url.strip())
        host = parts.netloc.rpartition("@")[2]
        out.append(f"{parts.scheme}://{parts.username + '@' if parts.username else ''}{host}")
    return ",".join(out)

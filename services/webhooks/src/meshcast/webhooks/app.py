"""Composition root of the webhook relay: NATS, the HTTP endpoint, the relay, health.

Stateless: where it is, is the durable consumer's acknowledged position in
JetStream. Ready once the consumer is bound and NATS is connected; a slow or
failing endpoint makes it neither unready nor dead (it is retrying, by design),
and it never touches a gateway: the gateways store their events in the stream
and never wait for this process.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as Nats

from meshcast.bus import Subjects, close
from meshcast.common.health import HealthServer
from meshcast.common.node import NodeInfoResponder, node_name
from meshcast.common.service import connect_nats

from .delivery import Delivery, HttpEndpoint, Policy
from .relay import Relay
from .settings import WebhookSettings

log = structlog.get_logger(__name__)


class WebhooksApp:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self._nc: Nats | None = None
        self._relay: Relay | None = None
        self._node: NodeInfoResponder | None = None
        self._endpoint = HttpEndpoint(
            settings.webhook_url, timeout=settings.webhook_timeout, connections=settings.webhook_max_in_flight
        )
        self._health = HealthServer(settings.health_host, settings.health_port, self.ready)

    def ready(self) -> bool:
        return self._relay is not None and self._relay.bound and self._nc is not None and self._nc.is_connected

    async def start(self) -> None:
        settings = self.settings
        await self._health.start()
        await self._endpoint.start()
        self._nc = nc = await connect_nats(settings)
        js = nc.jetstream(timeout=settings.nats_timeout)
        policy = Policy(
            max_attempts=settings.webhook_max_attempts,
            backoff_initial=settings.webhook_backoff_initial,
            backoff_max=settings.webhook_backoff_max,
            jitter=settings.webhook_jitter,
            dead_letter_timeout=settings.webhook_dead_letter_timeout,
        )
        delivery = Delivery(
            self._endpoint,
            settings.webhook_secret.get_secret_value().encode(),
            policy,
            js=js,
            dead_letter_subject=self.subjects.dead_letter,
            relay=settings.durable,
        )
        self._relay = Relay(js, self.subjects, settings, delivery)
        await self._relay.start()
        self._node = NodeInfoResponder(nc, self.subjects, node_name("webhooks", settings.node_name))
        await self._node.start()
        log.info(
            "webhooks started",
            durable=settings.durable,
            kinds=list(settings.kinds),
            max_attempts=settings.webhook_max_attempts,
            health_port=self._health.port,
        )

    @property
    def health_port(self) -> int:
        return self._health.port

    async def stop(self) -> None:
        if self._relay is not None:
            await self._relay.stop()
        if self._node is not None:
            await self._node.stop()
        await self._endpoint.stop()
        await self._health.stop()
        if self._nc is not None:
            await close(self._nc, self.settings.nats_timeout)
        log.info("webhooks stopped")

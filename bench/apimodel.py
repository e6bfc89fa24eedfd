"""What the ``api`` scenario is asked to do and what it measured (shared by the runner and the report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.apiload import BATCH, CLOSED, PHASES, RATE

if TYPE_CHECKING:
    from bench.scenarios import CpuWindow

# The namespace of the history variant (the live one publishes to `bench:0`).
API_HISTORY_NAMESPACE = "apihist"


@dataclass(frozen=True)
class ApiPlan:
    """Sizes and secondary targets of the api scenario (the subscribers are ``Scenario.connections``)."""

    history: bool = False
    publishers: int = 1
    closed_connections: int = 32
    rate: float = 1000.0
    rate_connections: int = 16
    batch_size: int = 100
    batch_connections: int = 4
    phases: tuple[str, ...] = PHASES
    rate_p99_ms: float = 5.0
    drain_timeout: float = 60.0

    def connections(self, kind: str) -> int:
        """Keep-alive connections of a phase, over all publisher processes."""
        return {CLOSED: self.closed_connections, RATE: self.rate_connections, BATCH: self.batch_connections}[kind]

    def batch(self, kind: str) -> int:
        return self.batch_size if kind == BATCH else 1


@dataclass
class ApiPhaseFigures:
    """One phase: requests through the API, and the deliveries they caused."""

    kind: str
    connections: int
    batch_size: int
    target_rate: float = 0.0
    seconds: float = 0.0
    sent: int = 0
    answered: int = 0
    errors: int = 0
    unanswered: int = 0
    scheduled: int = 0
    requests_per_s: float | None = None
    publications_per_s: float | None = None
    # Request latency (first byte written to last byte read), ms.
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    # rate: due time to send, ms; held: every due request was sent, on time, and answered.
    lag_p99_ms: float | None = None
    lag_max_ms: float | None = None
    held: bool | None = None
    # Deliveries of the window's publications (publisher send to subscriber receive).
    published: int = 0
    delivered: int = 0
    expected: int = 0
    deliveries_per_s: float | None = None
    delivery_p50_ms: float | None = None
    delivery_p99_ms: float | None = None
    # Every publication so far (warmups included) to every subscriber, after the drain.
    total_delivered: int = 0
    total_expected: int = 0
    drain_s: float = 0.0
    disconnects: int = 0
    cpu: CpuWindow | None = None
    rss: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    @property
    def label(self) -> str:
        if self.kind == RATE:
            return f"rate {self.target_rate:g}/s"
        if self.kind == BATCH:
            return f"batch x{self.batch_size}"
        return self.kind

    @property
    def all_delivered(self) -> bool:
        # More than owed: a request cut off in flight was published after all.
        return self.total_expected > 0 and self.total_delivered >= self.total_expected


@dataclass
class ApiFigures:
    """What the api scenario measured beyond the common columns."""

    channel: str
    history: bool
    subscribers: int
    publishers: int
    phases: list[ApiPhaseFigures] = field(default_factory=list)
    first_error: str = ""

    def phase(self, kind: str) -> ApiPhaseFigures | None:
        return next((p for p in self.phases if p.kind == kind), None)

"""What the ``control`` scenario is asked to do and what it measured (shared by the runner and the report).

Two parts. Rounds: N clients connected over the gateways, then one auth
service call per user (``DisconnectUser`` on fresh gateways, again on warm
ones, then ``RevokeUser``); per client, the time from its user's call start
to the close frame its socket got.
Outages: NATS goes away under the running auth service (``stopped``: the
process ends and is started again on the same ports and store; ``frozen``:
SIGSTOP, then SIGCONT, so connections stay open and nothing answers) while
``RevokeUser`` is called at a fixed pace; per call, the time to its answer
(UNAVAILABLE is expected), then the time from NATS being back to the first
call that succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshcast.protocol.codes import DisconnectCode

if TYPE_CHECKING:
    from bench.scenarios import CpuWindow

DISCONNECT = "DisconnectUser"
REVOKE = "RevokeUser"
# The rounds in order, (call, cold). DisconnectUser leaves the tokens valid, so it goes first, twice:
# a fresh gateway's first mass close is slower (measured and listed), the warm one is the row.
ROUNDS = ((DISCONNECT, True), (DISCONNECT, False), (REVOKE, False))
# The close code each call's control message carries (auth README).
EXPECTED_CODE = {DISCONNECT: int(DisconnectCode.FORCE_NO_RECONNECT), REVOKE: int(DisconnectCode.INVALID_TOKEN)}
STOPPED = "stopped"
FROZEN = "frozen"
OUTAGES = (STOPPED, FROZEN)
OK = "OK"
UNAVAILABLE = "UNAVAILABLE"
# The clients' users are `ctl-user<i>`; the outage calls revoke one nobody connects as.
USER_PREFIX = "ctl-user"
BYSTANDER = "ctl-bystander"


@dataclass(frozen=True)
class ControlPlan:
    """Sizes and bounds of the control scenario (the clients are ``Scenario.connections``)."""

    gateways: int = 2
    users: int = 1
    # Every client closed with the expected code within this many seconds of its call: the goal.
    target_s: float = 2.0
    # How long the workers wait for close frames after a call's start.
    close_timeout: float = 10.0
    # The auth service's MESHCAST_NATS_TIMEOUT.
    nats_timeout: float = 1.0
    outages: tuple[str, ...] = OUTAGES
    outage_s: float = 2.0
    call_interval_s: float = 0.1
    recovery_timeout: float = 30.0

    @property
    def unavailable_target_s(self) -> float:
        """An outage call is answered within this bound: the service's own, not the caller's deadline."""
        return self.nats_timeout + 0.5


@dataclass(frozen=True)
class CallResult:
    """One gRPC call: wall-clock ns of its start and of its answer, and the status code's name."""

    method: str
    user: str
    start_ns: int
    end_ns: int
    code: str
    detail: str = ""

    @property
    def took_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class RoundFigures:
    """One call per user, and how its clients were closed."""

    method: str
    expected_code: int
    # The first round of fresh gateways: their first mass close (reported apart, not in the row).
    cold: bool = False
    clients: int = 0
    connect_s: float = 0.0
    calls: list[CallResult] = field(default_factory=list)
    closed: int = 0  # with the expected code, within close_timeout
    within_target: int = 0
    other_codes: dict[int, int] = field(default_factory=dict)
    dropped: int = 0  # the socket ended without a close frame
    unclosed: int = 0
    # Call start to close frame, ms: p50, p95, p99, max (of the clients closed with the expected code).
    close_ms: tuple[float, float, float, float] | None = None
    # Gateway name -> (closed, p50 ms, max ms).
    per_gateway: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    cpu: CpuWindow | None = None
    first_error: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} (cold)" if self.cold else self.method

    @property
    def all_closed(self) -> bool:
        return self.clients > 0 and self.closed == self.clients


@dataclass
class OutageFigures:
    """RevokeUser calls while NATS is away, then until one succeeds after it is back."""

    kind: str
    calls: list[CallResult] = field(default_factory=list)
    # Answer times of the calls made while NATS was away, ms: p50, p95, max (UNAVAILABLE ones).
    unavailable_ms: tuple[float, float, float] | None = None
    codes: dict[str, int] = field(default_factory=dict)
    # stopped: from starting nats-server again to its /healthz answering.
    restart_s: float | None = None
    # From NATS back (healthz, or SIGCONT) to the answer of the first call that succeeded.
    recovered_s: float | None = None
    probes: int = 0
    failed_after_back: int = 0
    cpu: CpuWindow | None = None
    first_error: str = ""

    @property
    def unavailable(self) -> int:
        return self.codes.get(UNAVAILABLE, 0)


@dataclass
class ControlFigures:
    """What the control scenario measured beyond the common columns."""

    clients: int
    users: int
    gateways: int
    nats_timeout: float
    rounds: list[RoundFigures] = field(default_factory=list)
    # RevokeUser calls at the outages' pace with NATS up: what a call takes when it works.
    baseline: list[CallResult] = field(default_factory=list)
    outages: list[OutageFigures] = field(default_factory=list)
    first_error: str = ""

    def round(self, method: str) -> RoundFigures | None:
        """The warm round of ``method``."""
        return next((r for r in self.rounds if r.method == method and not r.cold), None)

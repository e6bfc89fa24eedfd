"""How long `make run` waits before restarting a service that exited.

Kubernetes' CrashLoopBackOff, scaled for a laptop: the first restart waits
`initial` seconds, each further one twice as long up to `cap`, and a process
that stayed up `reset_after` seconds or more starts over at `initial`. Pure:
time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The restart delays: `initial` doubling up to `cap`, reset after `reset_after` seconds up."""

    initial: float = 0.5
    cap: float = 30.0
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.reset_after <= 0:
            raise ValueError("need 0 < initial <= cap and reset_after > 0")


@dataclass(slots=True)
class Backoff:
    """One service's restart delays under `policy`."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    _next: float = 0.0

    def __post_init__(self) -> None:
        self._next = self.policy.initial

    def delay(self, uptime: float) -> float:
        """The wait before restarting a process that ran `uptime` seconds."""
        if uptime >= self.policy.reset_after:
            self._next = self.policy.initial
        delay = self._next
        self._next = min(delay * 2, self.policy.cap)
        return delay

"""Backlog-based worker scaling (pure): ready + unacknowledged messages, not ready alone, so workers busy with a
message are not scaled away mid-message. Up at once; down only after the backlog stayed low for the environment's
``scaleDownStabilizationSeconds`` (default 60); a changed ``maxReplicas`` below the current count applies at once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from matchenv.api import AutoscalingSpec

OVERRIDE_PREFIX = "spec.workers.replicas was set to"


def target_replicas(spec: AutoscalingSpec, backlog: int) -> int:
    """Replicas the backlog asks for, within [minReplicas, maxReplicas]."""
    wanted = math.ceil(backlog / spec.messages_per_replica) if backlog > 0 else 0
    return max(spec.min_replicas, min(spec.max_replicas, wanted))


@dataclass(frozen=True)
class Decision:
    """One look at an environment: what ``spec.workers.replicas`` should be, and why."""

    replicas: int
    scaled_from: int | None  # the autoscaler's own previous count, when it changes it
    overridden: int | None  # a count someone else wrote, which is put back
    message: str


@dataclass
class Autoscaler:
    """Remembers, per environment, since when a lower target has held."""

    _low_since: dict[str, float] = field(default_factory=dict)

    def decide(self, key: str, spec: AutoscalingSpec, backlog: int, current: int, now: float) -> int:
        if not spec.enabled:
            self._low_since.pop(key, None)
            return current
        target = target_replicas(spec, backlog)
        if target >= current or current > spec.max_replicas:
            self._low_since.pop(key, None)
            return target
        since = self._low_since.setdefault(key, now)
        if now - since >= spec.scale_down_stabilization_seconds:
            self._low_since.pop(key, None)
            return target
        return current

    def review(self, key: str, spec: AutoscalingSpec, backlog: int, asked: int, recorded: int | None, now: float,
               last_message: str | None = None) -> Decision:
        """The decision for an environment whose spec asks for ``asked`` workers, where the autoscaler last wrote
        ``recorded`` (None: never). A differing ``asked`` was set by someone else: the autoscaler goes on from its
        own count and puts its decision back, saying so."""
        current = asked if recorded is None else recorded
        wanted = self.decide(key, spec, backlog, current, now)
        target = target_replicas(spec, backlog)
        bounds = (f"one worker per {spec.messages_per_replica} messages, between minReplicas {spec.min_replicas} "
                  f"and maxReplicas {spec.max_replicas}")
        if recorded is not None and asked != recorded and asked != wanted:
            return Decision(wanted, None, asked,
                            f"{OVERRIDE_PREFIX} {asked} by hand, but autoscaling is enabled and decides the number "
                            f"of workers: put back to {wanted} for a backlog of {backlog} messages ({bounds}); set "
                            "autoscaling.enabled to false to scale by hand")
        if wanted != current:
            return Decision(wanted, current, None,
                            f"scaled {current} -> {wanted} workers for a backlog of {backlog} messages ({bounds})")
        if target < wanted:
            return Decision(wanted, None, None,
                            f"a backlog of {backlog} messages asks for {target} workers; keeping {wanted} until it "
                            f"has lasted scaleDownStabilizationSeconds ({spec.scale_down_stabilization_seconds} s)")
        if last_message and last_message.startswith(OVERRIDE_PREFIX):
            return Decision(wanted, None, None, last_message)  # the explanation stays until the count moves
        return Decision(wanted, None, None, f"{wanted} workers for a backlog of {backlog} messages ({bounds})")

    def forget(self, key: str) -> None:
        self._low_since.pop(key, None)

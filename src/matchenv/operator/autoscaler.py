"""Backlog-based worker scaling (pure): ready + unacknowledged messages, not ready alone, so workers busy with a
message are not scaled away mid-message. Up at once; down only after the backlog stayed low for the environment's
``scaleDownStabilizationSeconds`` (default 60)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from matchenv.models import AutoscalingSpec


def target_replicas(spec: AutoscalingSpec, backlog: int) -> int:
    """Replicas the backlog asks for, within [minReplicas, maxReplicas]."""
    wanted = math.ceil(backlog / spec.messages_per_replica) if backlog > 0 else 0
    return max(spec.min_replicas, min(spec.max_replicas, wanted))


@dataclass
class Autoscaler:
    """Remembers, per environment, since when a lower target has held."""

    _low_since: dict[str, float] = field(default_factory=dict)

    def decide(self, key: str, spec: AutoscalingSpec, backlog: int, current: int, now: float) -> int:
        if not spec.enabled:
            self._low_since.pop(key, None)
            return current
        target = target_replicas(spec, backlog)
        if target >= current:
            self._low_since.pop(key, None)
            return target
        since = self._low_since.setdefault(key, now)
        if now - since >= spec.scale_down_stabilization_seconds:
            self._low_since.pop(key, None)
            return target
        return current

    def forget(self, key: str) -> None:
        self._low_since.pop(key, None)

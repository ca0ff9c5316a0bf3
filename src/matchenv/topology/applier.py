"""Run a plan against the broker, in order, saying what was done."""

from __future__ import annotations

from collections.abc import Callable

from matchenv.topology.client import BrokerError, BrokerNotFound
from matchenv.topology.planner import Action, Broker, Plan


class ApplyError(BrokerError):
    """An action failed; ``failed`` names it and ``done`` lists what was applied before it."""

    def __init__(self, cause: BrokerError, failed: str, done: list[str]) -> None:
        super().__init__(str(cause), cause.operation, cause.status)
        self.failed = failed
        self.cause = cause
        self.done = done


def apply_plan(broker: Broker, plan: Plan, guard: Callable[[Action], object] | None = None,
               on_done: Callable[[str], None] | None = None) -> list[str]:
    """Apply every action of ``plan``; return their descriptions. Raises :class:`ApplyError` at the first failure.
    ``guard`` is asked before each action (the leader's write fence) and may raise to stop; ``on_done`` is told
    each description as soon as that action is done (so what was done is reported even if a later one fails)."""
    done: list[str] = []
    for action in plan.actions:
        if guard is not None:
            guard(action)
        try:
            action.apply(broker)
            done.append(action.describe())
        except BrokerError as exc:
            if not (action.removal and isinstance(exc, BrokerNotFound)):
                raise ApplyError(exc, action.describe(), done) from exc
            done.append(f"{action.describe()} (gone already)")  # what it removes went meanwhile: done
        if on_done is not None:
            on_done(done[-1])
    return done

"""Run a plan against the broker, in order, saying what was done."""

from __future__ import annotations

import functools
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
               on_done: Callable[[str], None] | None = None, side_by_side: SideBySide | None = None) -> list[str]:
    """Apply every action of ``plan``; return their descriptions. Raises :class:`ApplyError` at the first failure.
    ``guard`` is asked before each action (the leader's write fence) and may raise to stop; ``on_done`` is told
    each description as soon as that action is done (so what was done is reported even if a later one fails).
    With ``side_by_side``, neighbours of one stage (a new environment's declares, then its bindings) run together:
    seven writes one after the other were a fifth of its apply -> TopologyReady."""
    done: list[str] = []
    for run in _runs(plan.actions):
        if guard is not None:
            for action in run:
                guard(action)
        if side_by_side is None or len(run) == 1:
            outcomes = []
            for action in run:  # one after the other: none after a failure
                outcomes.append(_attempt(broker, action))
                if outcomes[-1] is not None and not (action.removal and isinstance(outcomes[-1], BrokerNotFound)):
                    break
        else:
            outcomes = side_by_side([functools.partial(_attempt, broker, action) for action in run])
        failed: ApplyError | None = None
        for action, error in zip(run, outcomes, strict=False):  # up to a failure, when one after the other
            if error is None:
                done.append(action.describe())
            elif action.removal and isinstance(error, BrokerNotFound):
                done.append(f"{action.describe()} (gone already)")  # what it removes went meanwhile: done
            else:
                failed = failed or ApplyError(error, action.describe(), done)
                continue
            if on_done is not None:
                on_done(done[-1])
        if failed is not None:
            raise failed from failed.cause
    return done


SideBySide = Callable[[list[Callable[[], "BrokerError | None"]]], list["BrokerError | None"]]


def _attempt(broker: Broker, action: Action) -> BrokerError | None:
    try:
        action.apply(broker)
    except BrokerError as exc:
        return exc
    return None


def _runs(actions: tuple[Action, ...]) -> list[list[Action]]:
    """The plan in runs: neighbours of one stage together, every other action on its own, in order."""
    runs: list[list[Action]] = []
    for action in actions:
        if runs and action.stage is not None and runs[-1][-1].stage == action.stage:
            runs[-1].append(action)
        else:
            runs.append([action])
    return runs

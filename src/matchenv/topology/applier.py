"""Run a plan against the broker, in waves of actions side by side, saying what was done."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from matchenv.topology.client import BrokerError, BrokerNotFound
from matchenv.topology.parallel import side_by_side
from matchenv.topology.planner import Action, Broker, Named, Plan


class ApplyError(BrokerError):
    """An action failed; ``failed`` names it and ``done`` lists what was applied (before it, or beside it in its
    wave)."""

    def __init__(self, cause: BrokerError, failed: str, done: list[str]) -> None:
        super().__init__(str(cause), cause.operation, cause.status)
        self.failed = failed
        self.cause = cause
        self.done = done


def waves(actions: Sequence[Action]) -> list[list[Action]]:
    """``actions`` in waves: each wave's actions are made side by side once the wave before has ended. An action
    joins the first wave after every earlier action it names (a binding after its queue and exchange, permissions
    after their user); permissions and policies after everything earlier that the plan makes; a binding after the
    plan's bindings before it; a claim after the plan's first claim. A removal is a wave of its own, in its place:
    what comes before it and after it keeps that order."""
    out: list[list[Action]] = []
    made: dict[Named, int] = {}  # what an earlier action makes -> its wave
    floor = 0  # the wave after the last removal
    last_binding = first_claim = -1
    for action in actions:
        if action.removal:
            out.append([action])
            floor = len(out)
            continue
        after = list(made.values()) if action.after_made else [made[n] for n in action.needs() if n in made]
        if action.binding:
            after.append(last_binding)
        if action.claims():
            after.append(first_claim)
        wave = max([floor, *(w + 1 for w in after)])
        if wave == len(out):
            out.append([])
        out[wave].append(action)
        made.update(dict.fromkeys(action.makes(), wave))
        if action.binding:
            last_binding = wave
        if action.claims() and first_claim < 0:
            first_claim = wave
    return out


def apply_plan(broker: Broker, plan: Plan, guard: Callable[[Action], object] | None = None,
               on_done: Callable[[str], None] | None = None) -> list[str]:
    """Apply every action of ``plan`` in :func:`waves`; return their descriptions, wave by wave. ``guard`` is asked
    before each action (the leader's write fence) and may raise to stop; ``on_done`` is told each description once
    its wave has ended (so what was done is reported even if a later one fails). Raises :class:`ApplyError` for a
    wave's first failure in the plan's order, once that wave has ended; no later wave starts."""
    done: list[str] = []
    for wave in waves(plan.actions):
        if guard is not None:
            for action in wave:
                guard(action)
        outcomes = side_by_side([functools.partial(action.apply, broker) for action in wave])
        failed: tuple[Action, Exception] | None = None
        for action, outcome in zip(wave, outcomes, strict=True):
            if not isinstance(outcome, Exception):
                said = action.describe()
            elif action.removal and isinstance(outcome, BrokerNotFound):
                said = f"{action.describe()} (gone already)"  # what it removes went meanwhile: done
            else:
                failed = failed or (action, outcome)
                continue
            done.append(said)
            if on_done is not None:
                on_done(said)
        if failed is not None:
            action, exc = failed
            if isinstance(exc, BrokerError):
                raise ApplyError(exc, action.describe(), done) from exc
            raise exc
    return done

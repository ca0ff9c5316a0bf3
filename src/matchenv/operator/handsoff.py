"""Hands off: the annotation under which the operator changes nothing for one environment.

During an incident an engineer fixing the broker or the workers by hand must not see the operator undo it.
``matchenv.io/reconcile: "false"`` on a MatchEnvironment stops every change the operator would make for it — no
repair of the broker objects, no scaling, no Deployment written, no backfill, no deletion of what it made (a delete
waits) — and says so in a ``ReconciliationPaused`` condition and an Event. Removing the annotation resumes: the next
converge repairs whatever was changed meanwhile.
"""

from __future__ import annotations

from typing import Any

from matchenv.api import API_GROUP
from matchenv.operator.status import condition_of, set_condition

RECONCILE_ANNOTATION = f"{API_GROUP}/reconcile"
CONDITION = "ReconciliationPaused"
REASON = "HandsOff"
MESSAGE = (f'annotation {RECONCILE_ANNOTATION}="false": the operator changes nothing for this environment (no '
           "repair, no scaling, no deletion) until it is removed")
DELETE_WAITS = (f'deletion waits: annotation {RECONCILE_ANNOTATION}="false" keeps the operator from removing '
                "anything; remove the annotation to let the deletion proceed")


def hands_off(env: dict[str, Any]) -> bool:
    """Whether the environment's annotations keep the operator's hands off it."""
    annotations = (env.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(RECONCILE_ANNOTATION, "")).strip().lower() == "false"


def held(status: dict[str, Any] | None) -> bool:
    """Whether ``status`` says the operator keeps its hands off (its ReconciliationPaused condition is True)."""
    return condition_of(status, CONDITION).get("status") == "True"


def switched(env: dict[str, Any]) -> bool:
    """The annotation and the status disagree: it was just set or removed, and no converge has seen it yet."""
    return not (env.get("metadata") or {}).get("deletionTimestamp") and hands_off(env) != held(env.get("status"))


def held_status(old: dict[str, Any] | None, now: str, message: str = MESSAGE) -> dict[str, Any]:
    """``old`` with a True ReconciliationPaused condition (its time kept while it stays) and the rest untouched:
    what the last converge saw stays visible, marked as no longer kept."""
    return {**(old or {}), "conditions": set_condition(old, CONDITION, True, REASON, message, now)}

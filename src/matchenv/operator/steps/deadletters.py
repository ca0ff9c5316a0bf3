"""Step: ``spec.deadLetterRequest``, carried out once per id with the operator's own broker credentials
(:class:`matchenv.dlq.queue.DeadLetterQueue`, as ``matchenv dlq`` does it): a user with leave to edit this
MatchEnvironment redrives or purges its dead letters without a broker Secret or a path to the broker. What became of
it is in ``status.deadLetterRequest`` and an Event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from matchenv.api import DeadLetterAction, DeadLetterRequest
from matchenv.dlq.queue import DeadLetterError, DeadLetterQueue, Tally
from matchenv.operator.context import Context, Services
from matchenv.operator.status import now_rfc3339

REDRIVE_RATE = 500.0  # letters a second: the workers see them as a burst, never as a flood

Opener = Callable[[str, str, str, float], Any]  # (url, queue, dlq, timeout) -> a DeadLetterQueue context


def carry_out(s: Services, ctx: Context, url: str | None, opener: Opener = DeadLetterQueue) -> dict[str, Any] | None:
    """The new ``status.deadLetterRequest``: the request carried out now when its id is new (``url``: the admin's
    AMQP URL of the queue's vhost; None while the topology is not converged: it waits), else as it was."""
    request: DeadLetterRequest | None = ctx.spec.dead_letter_request
    old = ctx.old_status.get("deadLetterRequest")
    if request is None or (old or {}).get("id") == request.id or url is None:
        return old if isinstance(old, dict) else None
    reason = request.reason
    of = f" {reason}" if reason else ""
    try:
        with opener(url, ctx.names.queue, ctx.names.dead_letter_queue, s.settings.broker_timeout) as dlq:
            if request.action is DeadLetterAction.REDRIVE:
                tally: Tally = dlq.redrive(reason, REDRIVE_RATE, request.limit)
            else:
                tally = dlq.purge(reason, request.limit)
            left = dlq.depth()
    except DeadLetterError as exc:
        message = f"{request.action.value} of the{of} dead letters of {ctx.names.dead_letter_queue} failed: {exc}"
        s.event(ctx.env, "DeadLetterRequestFailed", message, "Warning")
        return _record(request, None, None, False, message)
    done = sum(tally.moved.values())
    verb, where = ("redriven", f" to queue {ctx.names.queue}") if request.action is DeadLetterAction.REDRIVE \
        else ("purged", "")
    message = f"{done}{of} dead letters {verb} from {ctx.names.dead_letter_queue}{where}; {left} left there"
    if not tally.complete:
        message += f" (stopped at the limit, {request.limit})"
    s.event(ctx.env, "DeadLettersRedriven" if request.action is DeadLetterAction.REDRIVE else "DeadLettersPurged",
            f"request {request.id}: {message}")
    return _record(request, done, left, True, message)


def _record(request: DeadLetterRequest, done: int | None, left: int | None, ok: bool, message: str
            ) -> dict[str, Any]:
    return {"id": request.id, "action": request.action.value, "reason": request.reason, "done": done, "left": left,
            "succeeded": ok, "completionTime": now_rfc3339(), "message": message}

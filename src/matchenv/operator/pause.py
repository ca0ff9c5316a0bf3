"""How ``spec.paused`` pauses (``spec.pauseMode``), and what a pause in Unbind mode owes the environment: pure.

Hold keeps the queue bound (messages wait in it). Unbind takes the queue off the feed, so no backlog grows, and owes
it a catch-up: a replay of the archive from a little before the instant it was unbound (``CATCH_UP_MARGIN``: the
operator's clock and the broker's may differ; a match delivered twice is stored once, the workers upsert, and an
older copy never overwrites a newer row). The catch-up is recorded in ``status.pause.catchUp`` from the moment of
the unbind (Pending); once the queue is bound again it runs as a Job, as ``spec.backfill`` does
(:mod:`matchenv.operator.backfills`), so every change of state survives a restart of the operator. A new unbind
before a catch-up completed starts a new one from the older start: nothing owed is forgotten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from matchenv.api import BackfillPhase, MatchEnvironmentSpec, PauseMode
from matchenv.operator.status import rfc3339

Obj = dict[str, Any]
CATCH_UP_MARGIN = dt.timedelta(seconds=30)
NO_ARCHIVE = ("pauseMode Unbind needs the operator's archive of the feed to catch up on resume, and the operator "
              "keeps none (MATCHENV_ARCHIVE=off): the pause holds instead (the queue stays bound; messages wait)")


@dataclass(frozen=True)
class PausePlan:
    detached: bool  # the queue is to be unbound from the feed (paused in Unbind mode)
    status: Obj | None  # status.pause before the catch-up moves (None: not paused, no catch-up on record)
    catch_up: Obj | None  # the catch-up owed (status.pause.catchUp), None when there is none to run or follow


def catch_up_request(start: str, since: str, replaces: str) -> str:
    """Names one catch-up: from ``start``, owed by the pause that began at ``since`` (``replaces``: the unfinished
    catch-up it takes over, "" for none)."""
    return hashlib.sha256(f"catch-up|{start}|{since}|{replaces}".encode()).hexdigest()[:16]


def plan_pause(spec: MatchEnvironmentSpec, old: Obj, now: dt.datetime, archive: bool) -> PausePlan:
    """What the pause is now, from the spec, the last ``status.pause`` and whether the operator keeps an archive."""
    unbind = spec.paused and spec.pause_mode is PauseMode.UNBIND and archive
    last = old.get("catchUp") or None
    owed = last if last and last.get("phase") != BackfillPhase.COMPLETE.value else None
    status: Obj = {"mode": None, "since": None, "message": None}
    if spec.paused:
        mode = PauseMode.UNBIND if unbind else PauseMode.HOLD
        same = old.get("mode") == mode.value and bool(old.get("since"))  # the pause goes on
        since = str(old["since"]) if same else rfc3339(now)
        status.update(mode=mode.value, since=since, message=_message(spec, unbind))
        if unbind and not (same and owed is not None):
            start = str(owed["from"]) if owed and owed.get("from") else rfc3339(now - CATCH_UP_MARGIN)
            request = catch_up_request(start, since, str((owed or {}).get("request") or ""))
            owed = {"request": request, "phase": BackfillPhase.PENDING.value, "from": start, "attempts": 0}
    catch_up = owed or last
    if catch_up is None and not spec.paused:
        return PausePlan(False, None, None)
    if catch_up is not None:
        status["catchUp"] = catch_up
    return PausePlan(unbind, status, owed)


def _message(spec: MatchEnvironmentSpec, unbind: bool) -> str:
    if unbind:
        return ("the queue is unbound: it takes nothing from the feed while paused; on resume it is bound again and "
                "what it missed is replayed from the archive")
    if spec.pause_mode is PauseMode.UNBIND:
        return NO_ARCHIVE
    return "the queue stays bound: messages wait in it until the workers are resumed"

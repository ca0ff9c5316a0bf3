"""Calls made side by side: a snapshot's reads that depend on nothing but names, a plan's writes that depend on
nothing else in their wave. Each call keeps its own deadline (the management client's); this only waits for all."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

from matchenv.topology.tally import carried

_T = TypeVar("_T")
_PREFIX = "side-by-side"
# converges at once (the handlers' pool, 8) times the widest round one makes (4 or so); threads start on demand
THREADS = 32
_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix=_PREFIX)


def side_by_side(calls: Sequence[Callable[[], _T]]) -> list[_T | Exception]:
    """Each call's result, or the exception it raised, in the calls' order, once every call has ended. The caller's
    thread makes the first call itself; a call from one of these threads runs its own calls one after another (no
    thread of the pool ever waits for another). Each call's management calls count where the caller's do."""
    if len(calls) <= 1 or threading.current_thread().name.startswith(_PREFIX):
        return [_outcome(call) for call in calls]
    futures = [_pool.submit(carried(call)) for call in calls[1:]]
    outcomes = [_outcome(calls[0])]
    for future in futures:
        try:
            outcomes.append(future.result())
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def all_of(calls: Sequence[Callable[[], _T]]) -> list[_T]:
    """Every call's result, side by side; the first exception in the calls' order is raised once all have ended."""
    outcomes = side_by_side(calls)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return cast(list[_T], outcomes)


def _outcome(call: Callable[[], _T]) -> _T | Exception:
    try:
        return call()
    except Exception as exc:
        return exc


"""Management calls counted by who made them: a resync pass's own, not those the handlers make meanwhile.

The broker clients are shared by the handlers' converges and the resync passes; a count per client is the whole
process's. A pass holds a :class:`CallTally` on its threads (:func:`tallying`), and every call a client makes
(:func:`count_call`) adds to the tally its thread holds, if any.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

_T = TypeVar("_T")

_held = threading.local()


class CallTally:
    """Calls made by the threads that hold it (a pass, and its groups on other threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


@contextlib.contextmanager
def tallying(tally: CallTally) -> Iterator[CallTally]:
    """This thread's calls count into ``tally`` until the block ends."""
    previous = getattr(_held, "tally", None)
    _held.tally = tally
    try:
        yield tally
    finally:
        _held.tally = previous


def count_call() -> None:
    """One management call by this thread."""
    tally: CallTally | None = getattr(_held, "tally", None)
    if tally is not None:
        tally.add()


def carried(work: Callable[[], _T]) -> Callable[[], _T]:
    """``work``, to run on another thread with its calls counted where this thread's are."""
    tally: CallTally | None = getattr(_held, "tally", None)
    if tally is None:
        return work

    def counted() -> _T:
        with tallying(tally):
            return work()

    return counted

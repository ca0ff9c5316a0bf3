"""One check at a time per key, re-run for whoever asked meanwhile: N teardowns of environments on one exchange
ask whether anything is still bound to it, and each answer is a list of every binding of the exchange (quadratic
when 2,000 are deleted at once); coalesced, and begun at most once per ``every`` seconds, the checks made are one
per second of the burst, not one per environment, and the last request is still followed by a check that began
after it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable


class Coalesced:
    """``run(key, check)`` runs ``check`` (again while others asked meanwhile, each ``every`` seconds after the last
    began) and returns True, unless one for ``key`` is under way: then it only asks that one to run once more, and
    returns False at once."""

    def __init__(self, every: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.every = every
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._again: dict[Hashable, bool] = {}  # a key under way -> whether it was asked for meanwhile

    def run(self, key: Hashable, check: Callable[[], None]) -> bool:
        with self._lock:
            if key in self._again:
                self._again[key] = True
                return False
            self._again[key] = False
        try:
            while True:
                began = self._clock()
                check()
                with self._lock:
                    if not self._again[key]:
                        del self._again[key]
                        return True
                    self._again[key] = False
                # asked again meanwhile: others are likely still coming (a burst), let them gather
                self._sleep(max(0.0, began + self.every - self._clock()))
        except BaseException:
            # the caller fails (a teardown retried later asks again); those who left it to this one are
            # covered by that retry, which begins after them
            with self._lock:
                self._again.pop(key, None)
            raise

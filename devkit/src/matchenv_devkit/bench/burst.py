"""A burst of environments applied one after another in the background, with one more applied a little later:
the measures follow readiness from the first apply on, and time the late one from its own apply."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LATE = "late"  # the name of the environment applied during the burst (the burst's are env0000, env0001, ...)
LATE_AFTER = 2.0  # seconds into the burst
# who writes them (the field manager on each object): the burst is a GitOps controller's sync, the late one an
# engineer's kubectl, as in a team's namespace
BURST_WRITER = "gitops-sync"
LATE_WRITER = "kubectl-create"


@dataclass
class Burst:
    """What the background applies did: when they began, how long they took, the late environment's apply -> ready."""

    started: float = field(default_factory=time.monotonic)
    applied: float | None = None  # seconds until the last of the burst's applies returned
    late_seconds: float | None = None
    elsewhere_seconds: float | None = None  # the same, for one applied in another namespace (another team)
    errors: list[BaseException] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def join(self, timeout: float = 900) -> None:
        for thread in self.threads:
            thread.join(timeout)
        if self.errors:
            raise RuntimeError(f"the burst's applies failed: {self.errors[0]}") from self.errors[0]


def burst_name(i: int) -> str:
    return f"env{i:04d}"


def start_burst(create: Callable[[str], None], total: int, ready: Callable[[str], bool],
                late_after: float = LATE_AFTER, poll: float = 0.05, timeout: float = 900,
                elsewhere: tuple[Callable[[str], None], Callable[[str], bool]] | None = None,
                create_late: Callable[[str], None] | None = None) -> Burst:
    """Apply ``total`` environments one after another, and ``late_after`` seconds in one more, :data:`LATE`
    (with ``create_late`` when given, else ``create``), whose readiness (``ready``, polled every ``poll`` seconds) is
    timed from its own apply; with ``elsewhere`` (create and ready in another namespace), one more there at the same
    moment, timed alike."""
    burst = Burst()

    def timed(create_one: Callable[[str], None], ready_one: Callable[[str], bool]) -> float:
        began = time.monotonic()
        create_one(LATE)
        while not ready_one(LATE):
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"{LATE} not ready in {timeout:.0f} s")
            time.sleep(poll)
        return time.monotonic() - began

    def apply_all() -> None:
        try:
            for i in range(total):
                create(burst_name(i))
            burst.applied = time.monotonic() - burst.started
        except BaseException as exc:  # reported by join()
            burst.errors.append(exc)

    def apply_late(field: str, create_one: Callable[[str], None], ready_one: Callable[[str], bool]) -> None:
        try:
            time.sleep(late_after)
            setattr(burst, field, timed(create_one, ready_one))
        except BaseException as exc:
            burst.errors.append(exc)

    burst.threads = [threading.Thread(target=apply_all, daemon=True),
                     threading.Thread(target=apply_late, args=("late_seconds", create_late or create, ready),
                                      daemon=True)]
    if elsewhere is not None:
        burst.threads.append(threading.Thread(target=apply_late, args=("elsewhere_seconds", *elsewhere), daemon=True))
    for thread in burst.threads:
        thread.start()
    return burst

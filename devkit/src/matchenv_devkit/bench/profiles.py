"""py-spy on a running process (samples only while a thread holds the GIL: the process's own Python CPU), and what
its raw samples say: the share under named frames, the functions with the most self time."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# (label, a frame's text to look for, only as the innermost frame)
Part = tuple[str, str, bool]


@contextmanager
def attached(pid: int, samples: Path, rate: int = 100) -> Iterator[None]:
    """py-spy sampling ``pid`` at ``rate`` per second while the block runs, writing its raw samples to ``samples``
    when it ends (none there when py-spy could not attach)."""
    samples.unlink(missing_ok=True)
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--format", "raw",
                            "-r", str(rate), "-o", str(samples), "-p", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted
        spy.wait(timeout=60)


def _stacks(samples: Path) -> Iterator[tuple[str, int]]:
    for line in samples.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            yield stack, int(n)


def part_samples(samples: Path, parts: Sequence[Part]) -> tuple[dict[str, int], int]:
    """The samples under each part's frame (anywhere in the stack, or innermost), and all samples."""
    total = 0
    hits = {label: 0 for label, _, _ in parts}
    for stack, n in _stacks(samples):
        total += n
        innermost = stack.rpartition(";")[2]
        for label, frame, leaf in parts:
            if frame in (innermost if leaf else stack):
                hits[label] += n
    return hits, total


def cpu_shares(samples: Path, parts: Sequence[Part]) -> str:
    """The share of a raw profile's samples under each part, as text."""
    hits, total = part_samples(samples, parts)
    return "\n".join(f"{hits[label] / max(1, total):6.1%}  {label}" for label, _, _ in parts) + \
        f"\n({total} samples)"


def top_functions(samples: Path, count: int = 20) -> str:
    """The functions a raw profile spent most samples in (self time), as text."""
    own: Counter[str] = Counter()
    total = 0
    for stack, n in _stacks(samples):
        total += n
        own[stack.split(";")[-1]] += n
    return "\n".join(f"{n / max(1, total):6.1%}  {frame}" for frame, n in own.most_common(count))

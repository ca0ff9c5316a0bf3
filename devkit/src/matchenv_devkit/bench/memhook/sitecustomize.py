"""Loaded (through PYTHONPATH) by an operator the benchmark profiles for memory: with MATCHENV_BENCH_MEMDUMP set,
SIGUSR2 writes where its Python heap is (tracemalloc, on from start with PYTHONTRACEMALLOC) and what RSS
malloc_trim gives back to that file. Never part of the product."""

from __future__ import annotations

import ctypes
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType


def _rss_mib() -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _dump(_signum: int, _frame: FrameType | None) -> None:
    lines = []
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        lines.append(f"Python heap (tracemalloc): {current / 2**20:.1f} MiB now, {peak / 2**20:.1f} MiB at its peak")
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        lines += [f"  {stat.size / 2**20:6.1f} MiB  {stat.traceback[0].filename}"
                  for stat in snapshot.statistics("filename")[:12]]
    before = _rss_mib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    lines.append(f"RSS {before:.1f} MiB (with tracemalloc's own overhead); after malloc_trim(0): {_rss_mib():.1f} MiB")
    Path(os.environ["MATCHENV_BENCH_MEMDUMP"]).write_text("\n".join(lines) + "\n")


if os.environ.get("MATCHENV_BENCH_MEMDUMP"):
    signal.signal(signal.SIGUSR2, _dump)

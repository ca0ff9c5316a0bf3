"""The operator tunes glibc's malloc itself (arenas, the mmap threshold), unless the user chose a value, and gives
the heap's free pages back."""

import subprocess
import sys

import pytest

from matchenv.operator.memory import tune_malloc


def test_the_arenas_and_the_mmap_threshold_are_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(variable, raising=False)
    # the images and this machine are Debian's: glibc
    assert tune_malloc() == ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"]


def test_a_value_the_user_set_is_left_to_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert tune_malloc() == []


FREED_INSIDE_THE_HEAP = """
from matchenv.operator.memory import give_back
def rss():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
blocks = [bytes(2048) for _ in range(50_000)]  # ~100 MiB from malloc's heap (each below the mmap threshold)
pin = [bytes(2048) for _ in range(10)]  # allocated above them: the heap's top is not free, glibc keeps the pages
del blocks
before = rss()
given = give_back()
print(before, rss(), given)
"""


def test_pages_freed_inside_the_heap_are_given_back() -> None:
    """A burst frees its bodies between objects that live on: glibc keeps those pages resident until told."""
    out = subprocess.run([sys.executable, "-c", FREED_INSIDE_THE_HEAP], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    before, after, given = int(out[0]), int(out[1]), out[2]
    assert given == "True"
    assert before - after > 50  # MiB

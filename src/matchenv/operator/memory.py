"""The operator's memory: glibc's malloc tuned before any thread starts.

- **Arenas.** glibc gives each thread that allocates under contention an arena of its own, up to eight per core,
  and keeps what a burst allocated in each. The operator's threads (the converge pool, the broker clients' call
  threads, kopf's) left a burst's peak spread over many arenas: 163 MiB RSS after 300 environments, 139-142 MiB
  with two, for the same work and time.
- **The mmap threshold, fixed.** glibc serves a block of 128 KiB or more with its own mapping, given back when it
  is freed, but raises that threshold each time such a block is freed (up to 32 MiB): after the first API list
  the operator read (pages of several MiB of JSON), every later one was carved out of the heap, which kept the
  pages. Fixed at 128 KiB: RSS at 500 environments 148-150 MiB against 157-161, at 2,000 236 MiB against
  266-277; CPU per resync interval alike.

- **Free pages given back after each resync pass.** glibc returns memory to the system only from the top of its heap;
  pages freed inside it stay resident until ``malloc_trim`` releases them. A burst leaves many such pages (its
  bodies and lists freed in between what lives on): :func:`give_back` after each pass, ~1 ms on a fragmented heap,
  ~0 after. RSS at 500 environments 150.1 and 146.3 MiB against 152.2 and 149.8 without (alternated on one stack):
  small, the pages being mostly fragmented, not free.

A value the user set (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, or the same in ``GLIBC_TUNABLES``) wins:
glibc reads them itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable

log = logging.getLogger("matchenv.operator")

ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept
_M_ARENA_MAX = -8  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# option, value's environment variable, its name in GLIBC_TUNABLES
_SETTINGS = ((_M_ARENA_MAX, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
             (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"))


@functools.cache
def _libc(function: str) -> Callable[..., int] | None:
    """glibc's ``function``, or None under another C library."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    found: Callable[..., int] | None = getattr(libc, function, None)
    return found


def give_back() -> bool:
    """Release the heap's free pages to the system (glibc's ``malloc_trim(0)``); whether any were."""
    trim = _libc("malloc_trim")
    return bool(trim(0)) if trim is not None else False


def tune_malloc(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> list[str]:
    """Limit glibc's malloc arenas to ``arenas`` and fix its mmap threshold at ``mmap_threshold`` bytes (call
    before starting threads). Returns the environment variables whose effect this had: none where it cannot
    (another C library) and none for a value the user set."""
    mallopt = _libc("mallopt")
    if mallopt is None:
        return []
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    done = []
    for (option, variable, tunable), value in zip(_SETTINGS, (arenas, mmap_threshold), strict=True):
        if os.environ.get(variable) or f"{tunable}=" in tunables:
            continue
        if mallopt(option, value):
            done.append(variable)
        else:
            log.debug("%s not set: mallopt refused", variable)
    return done

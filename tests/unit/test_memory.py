"""The operator tunes glibc's malloc itself (arenas, the mmap threshold), unless the user chose a value."""

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

"""The operator limits glibc's malloc arenas itself, unless the user chose a number."""

import pytest

from matchenv.operator.memory import limit_malloc_arenas


def test_the_arenas_are_limited_on_glibc() -> None:
    assert limit_malloc_arenas() is True  # the images and this machine are Debian's: glibc


def test_a_number_the_user_set_is_left_to_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False

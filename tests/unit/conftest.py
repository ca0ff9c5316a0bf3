"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.loopback import Recorder
from tests.unit.world import World


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def server() -> Iterator[Recorder]:
    """A loopback HTTP server recording what reached it."""
    with Recorder.serving() as recorder:
        yield recorder

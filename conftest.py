"""Marks every test by its tier (the folder it lives in): the product's (``tests/<tier>``) and the dev kit's
(``devkit/tests/<tier>``) alike, so ``-m unit`` selects both."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = next((p for p in reversed(Path(str(item.fspath)).parent.parts) if p in TIERS), None)
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))

"""Marks every test by its tier (the folder it lives in)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.rabbitmq import RabbitMQNode

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in {"unit", "integration", "e2e"}:
            item.add_marker(getattr(pytest.mark, tier))


def _started(what: str, start: Callable[[], object]) -> None:
    """Start a real service for the session; the suite fails (never skips) without it."""
    try:
        start()
    except Exception as exc:
        pytest.fail(f"{what} did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    """A private RabbitMQ node (Debian's rabbitmq-server + management) on loopback, for the whole session."""
    node = RabbitMQNode(tmp_path_factory.mktemp("rabbitmq"), name="tests")
    _started("RabbitMQ", node.start)
    yield node
    node.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the item, so fixtures can show logs for failed tests."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server (Debian's postgresql) on loopback, for the whole session."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    _started("PostgreSQL", server.start)
    yield server
    server.destroy()

"""The real RabbitMQ and PostgreSQL of the session, and failed tests' reports kept for fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from matchenv_devkit.services.rabbitmq_releases import ReleaseUnavailable, default_series, release


def _started(what: str, start: Callable[[], object]) -> None:
    """Start a real service for the session; the suite fails (never skips) without it."""
    try:
        start()
    except Exception as exc:
        pytest.fail(f"{what} did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    """A private RabbitMQ node (Debian's rabbitmq-server + management) on loopback, for the whole session: RabbitMQ
    4 from Debian 13's packages, or this machine's 3.10 with MATCHENV_RABBITMQ=3."""
    series = default_series()
    try:
        chosen = release(series)
    except ReleaseUnavailable as exc:
        pytest.fail(f"RabbitMQ {series}: {exc}", pytrace=False)
    node = RabbitMQNode(tmp_path_factory.mktemp("rabbitmq"), name="tests", release=chosen)
    _started(f"RabbitMQ {chosen.series}", node.start)
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

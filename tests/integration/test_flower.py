"""Flower on one environment's task events (``spec.workers.taskEvents``): its workers send them to the environment's
own exchange, ``matchenv flower`` reads them with the environment's events user, and a headless Chromium
(Debian's) shows the workers page: the environment's worker, online, with what it processed. That user can read
the events and nothing else."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import requests

from matchenv.contracts import TASK_NAME
from matchenv_devkit.services.browser import chromium, flower_workers, screenshot, table_rows
from matchenv_devkit.services.process import ChildProcess, free_port, wait_for
from tests.integration.harness import Environment, WorkerProcess, make_match, protocol1_body, rows

MATCHES = 40
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                reason="Debian's chromium is not installed (make system-deps installs it)")


class Flower(ChildProcess):
    def __init__(self, env: Environment, log_path: Path) -> None:
        super().__init__(log_path)
        self.port = free_port()
        self.spawn([sys.executable, "-m", "matchenv.cli", "flower", "--port", str(self.port),
                    "--address", "127.0.0.1"],
                   {**os.environ, "CELERY_BROKER_URL": env.events_url,
                    "MATCHENV_EVENTS_EXCHANGE": env.topology.names.events_exchange})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"flower exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
        try:
            return requests.get(f"{self.url}/healthcheck", timeout=2).text == "OK"
        except requests.RequestException:
            return False


@pytest.fixture
def watched(make_env: Callable[..., Environment], database: str, tmp_path: Path
            ) -> Iterator[tuple[Environment, WorkerProcess, Flower]]:
    env = make_env(workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "db"}, "taskEvents": True})
    worker = WorkerProcess(env, {"DATABASE_URL": database, "MATCHENV_TASK_EVENTS": "true"},
                           tmp_path / "worker.log").start()
    flower = Flower(env, tmp_path / "flower.log")
    try:
        wait_for(flower.ready, timeout=60, what="flower answering")
        yield env, worker, flower
    finally:
        flower.stop()
        worker.stop()


def test_flower_shows_the_environments_workers_and_what_they_processed(
        watched: tuple[Environment, WorkerProcess, Flower], database: str, tmp_path: Path) -> None:
    env, _, flower = watched
    env.publish([protocol1_body(make_match(i)) for i in range(MATCHES)] + [b"{not json"])
    wait_for(lambda: rows(database) == MATCHES, timeout=60, what=f"{MATCHES} rows")
    hostname = f"matchenv-{env.queue}@"

    def workers_page() -> tuple[str, ...] | None:
        """The worker's row, once Flower shows it online with everything processed."""
        row = next((r for r in flower_workers(f"{flower.url}/workers") if r[0].startswith(hostname)), None)
        return row if row is not None and row[1] == "Online" and row[3] == str(MATCHES + 1) else None

    row = wait_for(workers_page, timeout=60, what="flower's workers page listing the worker online, "
                                                   f"{MATCHES + 1} processed")
    # worker, status, active, processed, failed (the malformed one: dead-lettered), succeeded (stored)
    assert row[1:6] == ("Online", "0", str(MATCHES + 1), "1", str(MATCHES)), row
    tasks = table_rows(chromium("--dump-dom", f"{flower.url}/tasks"))
    assert tasks, "flower's tasks page lists no task"  # its first page: each message a task, with what became of it
    assert {(r[0], r[2]) for r in tasks} <= {(TASK_NAME, "SUCCESS"), (TASK_NAME, "FAILURE")}, tasks[:3]
    shot = screenshot(f"{flower.url}/workers", tmp_path / "flower.png")
    assert shot.stat().st_size > 10_000
    if os.environ.get("MATCHENV_KEEP_SCREENSHOT"):  # how docs/flower.png is made
        shutil.copy(shot, os.environ["MATCHENV_KEEP_SCREENSHOT"])
    assert "Failed to capture events" not in flower.log(), flower.log()[-3000:]


def test_the_events_user_reads_the_events_and_nothing_else(
        watched: tuple[Environment, WorkerProcess, Flower]) -> None:
    env, _, _ = watched
    params = pika.URLParameters(env.events_url)

    def refused(do: Callable[[pika.adapters.blocking_connection.BlockingChannel], object]) -> bool:
        with pika.BlockingConnection(params) as conn:
            try:
                do(conn.channel())
            except pika.exceptions.ChannelClosedByBroker as exc:
                return exc.reply_code == 403
        return False

    assert refused(lambda ch: ch.basic_get(env.queue)), "the events user read the environment's queue"
    assert refused(lambda ch: ch.basic_get(env.dlq)), "the events user read the dead letters"

    def publish(exchange: str, key: str) -> Callable[[pika.adapters.blocking_connection.BlockingChannel], object]:
        def do(ch: pika.adapters.blocking_connection.BlockingChannel) -> object:
            ch.confirm_delivery()  # the publish waits for the broker's answer: a refusal closes the channel
            return ch.basic_publish(exchange, key, b"{}")
        return do

    assert refused(publish(env.topology.exchange, "")), "the events user published to the feed"
    assert refused(publish(env.topology.names.events_exchange, "task.succeeded")), "the events user sent an event"
    assert not refused(publish(f"{env.topology.names.events_exchange}.pidbox", "")), \
        "Flower cannot broadcast to its own exchange (it does so when it connects)"
    assert refused(lambda ch: ch.queue_declare("elsewhere")), "the events user declared another queue"
    assert refused(lambda ch: ch.exchange_declare("celery.pidbox", "fanout")), \
        "the events user declared the shared broadcast exchange"

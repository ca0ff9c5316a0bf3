"""Helpers for the worker tests: an environment's topology on the real broker, the worker as a real process,
and publishing the way the existing producers do (raw pika, Celery protocol-1 JSON bodies)."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pika
import psycopg
import requests

from matchenv.amqp import parameters
from matchenv.api import MatchEnvironmentSpec
from matchenv.connection import worker_amqp_url
from matchenv.topology.applier import apply_plan
from matchenv.topology.client import ManagementClient
from matchenv.topology.desired import DesiredTopology, desired_topology
from matchenv.topology.planner import plan_converge
from matchenv_devkit.services.process import ChildProcess, free_port
from matchenv_devkit.services.rabbitmq import BrokerEndpoints, RabbitMQNode
from matchenv_devkit.services.rabbitmq_cluster import RabbitMQCluster
from tests.cases import CLUSTER, environment

TASK = "celery_tasks.match_tasks.process_match_data"


def make_match(i: int, **changes: Any) -> dict[str, Any]:
    match = {
        "home_team": f"Home FC {i % 97}", "away_team": f"Away United {i % 89}", "match_date": "2025-10-13",
        "season": "2024-25", "age_group": "U14", "match_type": "League", "division": "Northeast",
        "division_id": 41, "league": "Homegrown", "home_score": i % 5, "away_score": (i * 3) % 4,
        "match_status": "completed", "external_match_id": f"mlsnext_{i}", "location": "Toyota Park",
        "source": "match-scraper",
    }
    match.update(changes)
    return match


def protocol1_body(match: Any) -> bytes:
    """Exactly what the existing producers publish."""
    return json.dumps({"id": str(uuid.uuid4()), "task": TASK, "args": [match], "kwargs": {}, "retries": 0,
                       "eta": None, "expires": None}).encode()


def rows(url: str, where: str = "true") -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return int(conn.execute(f"select count(*) from matches where {where}").fetchone()[0])  # type: ignore[index]


def duplicates(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("select count(*) - count(distinct external_match_id) from matches").fetchone()
        return int(row[0])  # type: ignore[index]


def node_endpoints(rabbitmq: RabbitMQNode | RabbitMQCluster) -> list[BrokerEndpoints]:
    """A lone node's endpoints, or each of a cluster's nodes'."""
    return rabbitmq.endpoints if isinstance(rabbitmq, RabbitMQCluster) else [rabbitmq.endpoints]


class Environment:
    """A queue, its DLQ and a least-privilege user on the real broker (a node or a cluster), as the operator would
    make them."""

    def __init__(self, rabbitmq: RabbitMQNode | RabbitMQCluster, name: str, **spec: Any) -> None:
        self.rabbitmq = rabbitmq
        nodes = node_endpoints(rabbitmq)
        ep = nodes[0]
        self.admin = ManagementClient(";".join(n.management_url for n in nodes), ep.username, ep.password)
        self.admin_url = ";".join(n.amqp_url for n in nodes)
        broker_url = ";".join(f"amqp://{n.host}:{n.amqp_port}" for n in nodes)
        self.topology: DesiredTopology = desired_topology(
            CLUSTER, "itest", name, MatchEnvironmentSpec.model_validate(environment(name, **spec)["spec"]))
        self.password = uuid.uuid4().hex
        self.events_password = uuid.uuid4().hex if self.topology.events else ""  # Flower's (taskEvents)
        apply_plan(self.admin, plan_converge(self.topology, self.admin.snapshot(), self.password,
                                             events_password=self.events_password))
        self.url = worker_amqp_url(broker_url, self.topology.names.broker_user, self.password, "/")
        self.events_url = worker_amqp_url(broker_url, self.topology.names.events_user, self.events_password, "/")

    def connect(self) -> pika.BlockingConnection:
        """An admin connection to the first node that answers."""
        return pika.BlockingConnection(parameters(self.admin_url, 10, blocked=60))

    @property
    def queue(self) -> str:
        return self.topology.queue.name

    @property
    def dlq(self) -> str:
        return self.topology.names.dead_letter_queue

    def publish(self, bodies: Iterable[bytes], exchange: str | None = None, routing_key: str | None = None,
                content_type: str = "application/json") -> int:
        """Publish persistent messages to the environment's exchange (or ``exchange``), committed in
        transactions of 500 (a commit returns once they are enqueued: as safe as a confirm, without waiting for
        the broker's disk sync once per message)."""
        count = 0
        with self.connect() as conn:
            channel = conn.channel()
            channel.tx_select()
            target = self.topology.exchange if exchange is None else exchange
            key = "" if routing_key is None else routing_key
            for body in bodies:
                channel.basic_publish(target, key, body, pika.BasicProperties(
                    content_type=content_type, content_encoding="utf-8", delivery_mode=2))
                count += 1
                if count % 500 == 0:
                    channel.tx_commit()
            channel.tx_commit()
        return count

    def dead_letters(self) -> list[tuple[dict[str, Any], bytes]]:
        """Drain the DLQ: (headers, body) of each message."""
        out: list[tuple[dict[str, Any], bytes]] = []
        with self.connect() as conn:
            channel = conn.channel()
            while True:
                method, props, body = channel.basic_get(self.dlq, auto_ack=True)
                if method is None:
                    return out
                out.append((props.headers or {}, body))

    def depth(self, queue: str | None = None) -> int:
        with self.connect() as conn:
            result = conn.channel().queue_declare(queue or self.queue, passive=True)
            return int(result.method.message_count)


class WorkerProcess(ChildProcess):
    """``matchenv worker`` as a real process with the environment's credentials."""

    def __init__(self, env: Environment, database_env: dict[str, str], log_path: Path, concurrency: int = 1
                 ) -> None:
        super().__init__(log_path)
        self.env = env
        self.database_env = database_env
        self.concurrency = concurrency
        self.port = free_port()

    def start(self, wait: bool = True) -> WorkerProcess:
        environ = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SUPABASE_URL"}}
        environ.update({
            "CELERY_BROKER_URL": self.env.url,
            "MATCHENV_QUEUE_TYPE": self.env.topology.queue.type,
            "MATCHENV_OWNER": self.env.topology.owner,
            "MATCHENV_DEAD_LETTER_EXCHANGE": self.env.topology.names.dead_letter_exchange,
            "MATCHENV_METRICS_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **self.database_env,
        })
        self.spawn([sys.executable, "-m", "matchenv.cli", "worker", "--queue", self.env.queue,
                    "--concurrency", str(self.concurrency)], environ)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout:.0f}s:\n{self.log()[-3000:]}")

    def metric(self, name: str, labels: str = "") -> float:
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        prefix = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(prefix + " "):
                return float(line.split()[-1])
        return 0.0

"""The whole system for the pipeline and chaos tests: control plane, node agent running real worker processes,
RabbitMQ, PostgreSQL (one database per environment), the operator, and `matchenv scrape`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client, config

from matchenv.devcluster.nodeagent import NodeAgent, wait_for_node_ready
from matchenv.devcluster.processrunner import ProcessRunner
from matchenv.devservices.postgres import PostgresServer
from matchenv.devservices.rabbitmq import RabbitMQNode
from tests.cases import environment
from tests.e2e.conftest import Kubectl
from tests.e2e.harness import ManagementReader, OperatorProcess, service_account_kubeconfig, wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Pipeline:
    kubectl: Kubectl
    rabbitmq: RabbitMQNode
    postgres: PostgresServer
    tmp: Path
    operator: OperatorProcess | None = None
    agent: NodeAgent | None = None
    databases: dict[str, str] = field(default_factory=dict)

    @property
    def mgmt(self) -> ManagementReader:
        return ManagementReader(self.rabbitmq)

    def start(self) -> Pipeline:
        kubectl = self.kubectl
        base = ROOT / "manifests/base"
        kubectl.run("apply", "-f", str(base / "namespace.yaml"), "-f", str(base / "rbac.yaml"))
        ep = self.rabbitmq.endpoints
        kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "matchenv-broker", "namespace": "matchenv-system"},
                       "stringData": {"url": f"amqp://127.0.0.1:{ep.amqp_port}", "management-url": ep.management_url,
                                      "username": ep.username, "password": ep.password}})
        self.clean_broker()
        api = config.new_client_from_config(str(kubectl.cluster.kubeconfig))
        self.agent = NodeAgent(api, runner=ProcessRunner(api, self.tmp / "pods")).start()
        wait_for_node_ready(client.CoreV1Api(api), self.agent.name)
        self.start_operator()
        return self

    def clean_broker(self) -> None:
        """Queues and users left by earlier tests would be adopted; start from a clean broker."""
        for queue in self.mgmt.get("/api/queues") or []:
            if queue["name"].startswith("matches."):
                self.mgmt.delete(f"/api/queues/%2F/{queue['name']}")
        for user in self.mgmt.get("/api/users") or []:
            if user["name"].startswith("matchenv."):
                self.mgmt.delete(f"/api/users/{user['name']}")

    def start_operator(self) -> OperatorProcess:
        sa = service_account_kubeconfig(self.kubectl, "matchenv-system", "matchenv-operator",
                                        self.tmp / "operator.kubeconfig")
        n = len(list(self.tmp.glob("operator-*.log")))
        self.operator = OperatorProcess(sa, self.tmp / f"operator-{n}.log", resync_seconds=3,
                                        identity=f"pipeline-{n}").start()
        return self.operator

    def stop(self) -> None:
        self.kubectl.run("delete", "menv", "--all", "--timeout=90s", check=False, timeout=120)
        if self.operator:
            self.operator.stop()
        if self.agent:
            self.agent.stop()

    def database(self, env: str) -> str:
        if env not in self.databases:
            self.databases[env] = self.postgres.create_database(f"pipeline_{env}_{os.getpid()}")
            self.kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": f"matchenv-db-{env}", "namespace": "default"},
                                "stringData": {"DATABASE_URL": self.databases[env]}})
        return self.databases[env]

    def apply(self, name: str, **spec: Any) -> None:
        """Apply examples/<name>.yaml if it exists, else a minimal environment; its database first."""
        self.database(name)
        example = ROOT / "examples" / f"{name}.yaml"
        if example.exists() and not spec:
            self.kubectl.run("apply", "-f", str(example))
        else:
            body = environment(name, **spec)
            body["spec"]["workers"]["databaseSecretRef"]["name"] = f"matchenv-db-{name}"
            self.kubectl.apply(body)

    def wait_ready(self, *names: str, timeout: float = 180) -> None:
        for name in names:
            self.kubectl.run("wait", "--for=condition=Ready", f"menv/{name}", f"--timeout={int(timeout)}s",
                             timeout=timeout + 30)

    def rows(self, env: str) -> int:
        try:
            with psycopg.connect(self.databases[env], connect_timeout=5) as conn:
                row = conn.execute("select count(*) from matches").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0

    def duplicates(self, env: str) -> int:
        with psycopg.connect(self.databases[env], connect_timeout=5) as conn:
            row = conn.execute("select count(*) - count(distinct external_match_id) from matches").fetchone()
        return int(row[0]) if row else 0

    def scrape(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RABBITMQ_URL": self.rabbitmq.endpoints.amqp_url}
        return subprocess.run([sys.executable, "-m", "matchenv.cli", "scrape", "--quiet", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def wait_rows(self, expected: dict[str, int], timeout: float = 180) -> None:
        wait_for(lambda: {e: self.rows(e) for e in expected} == expected, timeout=timeout,
                 what=f"rows {expected} (now {({e: self.rows(e) for e in expected})})")

    def queue_depth(self, queue: str) -> int | None:
        info = self.mgmt.queue(queue)
        return None if info is None else int(info.get("messages", 0))


def pipeline_fixture(kubectl: Kubectl, rabbitmq: RabbitMQNode, postgres: PostgresServer, tmp: Path
                     ) -> Iterator[Pipeline]:
    pipeline = Pipeline(kubectl, rabbitmq, postgres, tmp).start()
    try:
        yield pipeline
    finally:
        pipeline.stop()

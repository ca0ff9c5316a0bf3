"""The operator's e2e platform: the session's control plane and RabbitMQ, the CRD and RBAC, a node agent that
reports pods Ready, and the operator as a process with its ServiceAccount's token (exactly its RBAC)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
from kubernetes import client, config

from matchenv.topology.client import ManagementClient
from matchenv_devkit.cluster.nodeagent import NodeAgent, wait_for_node_ready
from matchenv_devkit.cluster.stack import clean_broker
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.e2e.conftest import Kubectl
from tests.e2e.harness import ManagementReader, OperatorProcess, service_account_kubeconfig, worker_user

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Platform:
    kubectl: Kubectl
    rabbitmq: RabbitMQNode
    mgmt: ManagementReader
    operator: OperatorProcess
    sa_kubeconfig: Path
    tmp: Path

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.kubectl.get_json("menv", name).get("status") or {}
        return status

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def user(self, name: str, namespace: str = "default") -> str:
        """The broker user of environment ``namespace/name`` (its name holds this cluster's identity)."""
        return worker_user(self.kubectl, name, namespace)

    def is_ready(self, name: str) -> bool:
        ready = self.condition(name, "Ready")
        return bool(ready and ready["status"] == "True")

    def publish(self, body: bytes = b'{"probe": true}', exchange: str = "matches-fanout") -> None:
        with pika.BlockingConnection(pika.URLParameters(self.rabbitmq.endpoints.amqp_url)) as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.basic_publish(exchange, "", body, pika.BasicProperties(delivery_mode=2), mandatory=True)

    def messages(self, queue: str) -> int | None:
        info = self.mgmt.queue(queue)
        return None if info is None else int(info.get("messages", 0))

    def purge(self, queue: str) -> None:
        self.mgmt.delete(f"/api/queues/%2F/{queue}/contents")


def broker_secret(rabbitmq: RabbitMQNode) -> dict[str, Any]:
    ep = rabbitmq.endpoints
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "matchenv-broker", "namespace": "matchenv-system"},
        "stringData": {"url": f"amqp://127.0.0.1:{ep.amqp_port}", "management-url": ep.management_url,
                       "username": ep.username, "password": ep.password},
    }


def db_secret(env: str, value: str = "postgresql://matchenv@127.0.0.1:5432/x") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"matchenv-db-{env}", "namespace": "default"},
            "stringData": {"DATABASE_URL": value}}


def platform_fixture(kubectl: Kubectl, rabbitmq: RabbitMQNode, tmp: Path, resync: float,
                     databases: tuple[str, ...] = ()) -> Iterator[Platform]:
    ep = rabbitmq.endpoints
    clean_broker(ManagementClient(ep.management_url, ep.username, ep.password))  # earlier modules' retained queues
    base = ROOT / "manifests/base"
    kubectl.run("apply", "-f", str(base / "namespace.yaml"), "-f", str(base / "rbac.yaml"))
    kubectl.apply(broker_secret(rabbitmq))
    for env in databases:
        kubectl.apply(db_secret(env))
    api = config.new_client_from_config(str(kubectl.cluster.kubeconfig))
    agent = NodeAgent(api).start()
    wait_for_node_ready(client.CoreV1Api(api), agent.name)
    sa = service_account_kubeconfig(kubectl, "matchenv-system", "matchenv-operator", tmp / "operator.kubeconfig")
    operator = OperatorProcess(sa, tmp / "operator.log", resync_seconds=resync).start()
    plat = Platform(kubectl, rabbitmq, ManagementReader(rabbitmq), operator, sa, tmp)
    try:
        yield plat
    finally:
        kubectl.run("delete", "menv", "--all", "-A", "--timeout=90s", check=False, timeout=120)
        plat.operator.stop()
        agent.stop()
    log = "".join(p.read_text(errors="replace") for p in tmp.glob("*.log"))
    lines = log.splitlines()
    # a 403 in a namespace being deleted (an event about an environment in it) is the API server's, not RBAC's
    terminating = set(re.findall(r"in namespace ([a-z0-9-]+) because it is being terminated", log))
    forbidden = [line for i, line in enumerate(lines) if ("Forbidden" in line or '" 403 ' in line)
                 and "because it is being terminated" not in " ".join(lines[i:i + 4])
                 and not any(f"/namespaces/{ns}/" in line for ns in terminating)]
    assert forbidden == [], "the operator hit a permission its RBAC lacks"

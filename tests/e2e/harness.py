"""Pieces the operator e2e tests assemble: a management-API reader that does not go through the operator's own
client code, and waiting helpers. (The operator process itself lives in matchenv_devkit.cluster.operatorproc.)"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

import requests

from matchenv.naming import broker_user_name, cluster_id_from_uid
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.operatorproc import OperatorProcess, service_account_kubeconfig
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode


class ManagementReader:
    """Reads the broker through the management API directly (not through matchenv's client)."""

    def __init__(self, node: RabbitMQNode) -> None:
        self.base = node.endpoints.management_url
        self.auth = (node.endpoints.username, node.endpoints.password)

    def get(self, path: str) -> Any:
        response = requests.get(self.base + path, auth=self.auth, timeout=5)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def queue(self, name: str, vhost: str = "/") -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get(f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")
        return result

    def bindings(self, exchange: str, queue: str, vhost: str = "/") -> list[dict[str, Any]]:
        path = f"/api/bindings/{quote(vhost, safe='')}/e/{quote(exchange, safe='')}/q/{quote(queue, safe='')}"
        return self.get(path) or []

    def user(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get(f"/api/users/{quote(name, safe='')}")
        return result

    def policy(self, name: str, vhost: str = "/") -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.get(f"/api/policies/{quote(vhost, safe='')}/{quote(name, safe='')}")
        return result

    def delete(self, path: str) -> None:
        requests.delete(self.base + path, auth=self.auth, timeout=5).raise_for_status()


def cluster_id(kubectl: Kubectl) -> str:
    """The identity the operator finds for this cluster (no MATCHENV_CLUSTER_ID): from kube-system's UID."""
    return cluster_id_from_uid(kubectl.get_json("namespace", "kube-system")["metadata"]["uid"])


def worker_user(kubectl: Kubectl, name: str, namespace: str = "default") -> str:
    """The broker user the operator of this cluster keeps for environment ``namespace/name``."""
    return broker_user_name(cluster_id(kubectl), namespace, name)


def scale_steps(messages: list[str]) -> list[int]:
    """The worker counts a run of ``Scaled`` events went through while a backlog grew, e.g. ``[1, 3, 5]``: each
    step from where the one before ended (their times are to the second, so they are chained, not sorted)."""
    steps = {int(m[1]): int(m[2]) for m in (re.match(r"scaled (\d+) -> (\d+) workers", text) for text in messages)
             if m is not None}
    froms = set(steps) - set(steps.values())
    assert (len(froms), len(steps)) == (1, len(messages)), f"not one run of scale-ups: {messages}"
    counts = [froms.pop()]
    while counts[-1] in steps:
        counts.append(steps[counts[-1]])
    assert len(counts) == len(steps) + 1, f"not one run of scale-ups: {messages}"
    return counts


def secret_value(kubectl: Kubectl, namespace: str, name: str, key: str) -> str:
    data = kubectl.get_json("secret", name, "-n", namespace)["data"]
    return base64.b64decode(data[key]).decode()


__all__ = ["Kubectl", "ManagementReader", "OperatorProcess", "cluster_id", "scale_steps", "secret_value",
           "service_account_kubeconfig", "wait_for", "worker_user"]

"""The world the reconcile tests run in: the reconciler over in-memory fakes of the broker and the Kubernetes seam, in
milliseconds. (The e2e tier runs the same code against a real API server and RabbitMQ.)"""

from __future__ import annotations

import base64
from typing import Any

from matchenv.operator.context import Context, Services
from matchenv.operator.errors import TeardownIncomplete
from matchenv.operator.reconciler import Reconciler
from matchenv.operator.settings import OperatorSettings
from tests.cases import CLUSTER, environment
from tests.fakes import FakeClients, FakeKube, SimulatedBroker

ADMIN = {"url": "amqp://rabbitmq:5672", "management-url": "http://rabbitmq:15672", "username": "admin",
         "password": "admin-pw"}



class World:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.broker = SimulatedBroker()
        self.kube.add_secret("matchenv-system", "matchenv-broker", ADMIN)
        self.clients = FakeClients(self.broker, {"admin-pw"})
        self.settings = OperatorSettings(resync_seconds=1, leader_election=False, cluster_id=CLUSTER)
        self.reconciler = Reconciler(self.kube, self.settings, clients=self.clients,  # type: ignore[arg-type]
                                     stop_wait=0)

    def add(self, name: str, namespace: str = "default", annotations: dict[str, str] | None = None,
            **spec: Any) -> dict[str, Any]:
        body = environment(name, **spec)["spec"]
        self.kube.add_secret(namespace, f"matchenv-db-{name}", {"DATABASE_URL": "postgresql://db/x"})
        return self.kube.add_environment(namespace, name, body, annotations)

    @property
    def services(self) -> Services:
        return self.reconciler.services

    def context(self, name: str, namespace: str = "default") -> Context:
        """The environment as a step sees it (no resync pass: every read is fresh)."""
        return self.services.context(self.kube.environment(namespace, name), None)

    def converge(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.reconciler.converge(self.kube.environment(namespace, name))

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        status: dict[str, Any] = self.kube.environments[(namespace, name)].get("status") or {}
        return status

    def condition(self, name: str, type_: str, namespace: str = "default") -> dict[str, Any]:
        return next(c for c in self.status(name, namespace)["conditions"] if c["type"] == type_)

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.kube.jobs.values())

    def reason(self, name: str, type_: str = "TopologyReady", namespace: str = "default") -> str:
        conditions = {c["type"]: c for c in self.status(name, namespace).get("conditions", [])}
        return str(conditions[type_]["reason"])

    def delete(self, name: str, namespace: str = "default") -> list[str]:
        """The delete handler as kopf retries it, with the workers' pods gone in between."""
        env = self.kube.environment(namespace, name)
        for _ in range(3):
            try:
                return self.reconciler.teardown(env)
            except TeardownIncomplete:
                self.kube.finish_deletions()
        raise AssertionError("teardown did not finish")

    def password(self, name: str, namespace: str = "default") -> str:
        return base64.b64decode(self.kube.secrets[(namespace, f"{name}-broker")]["data"]["password"]).decode()

"""The whole system on one machine: control plane, a node, RabbitMQ, PostgreSQL (one database per environment) and the
operator. ``matchenv-dev demo`` drives it; the pipeline and chaos tests too.

Two nodes: ``real`` (containerd + kubelet: worker pods are containers from the project's image, reaching RabbitMQ
and PostgreSQL through the ``rabbitmq`` and ``postgres`` Services, whose endpoints are the host's services on the
node's bridge) and ``process`` (the node agent runs each worker pod's command as a local process: fast, for tests of
the operator that are not about pods)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from kubernetes import client, config

from matchenv.crd import wait_until_served
from matchenv.topology.client import BrokerNotFound, ManagementClient
from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.images import REPO_ROOT, ImageBuilder
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.nodeagent import NodeAgent, wait_for_node_ready
from matchenv_devkit.cluster.nodeconfig import CLUSTER_DOMAIN, NODE_IP, POD_CIDR
from matchenv_devkit.cluster.operatorproc import OperatorProcess, service_account_kubeconfig
from matchenv_devkit.cluster.processrunner import ProcessRunner
from matchenv_devkit.cluster.realnode import RealNode
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from matchenv_devkit.services.rabbitmq_releases import default_series, release

ROOT = REPO_ROOT  # crds/, manifests/
BROKER_SERVICE = ("rabbitmq", "matchenv-system", 5672)
DATABASE_SERVICE = ("postgres", "default", 5432)


def _service_host(service: tuple[str, str, int]) -> str:
    name, namespace, _ = service
    return f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"


def host_service(service: tuple[str, str, int], host_port: int) -> list[dict[str, Any]]:
    """A Service without a selector whose one endpoint is a service of this host on the node's bridge."""
    name, namespace, port = service
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
         "spec": {"ports": [{"name": "main", "port": port, "targetPort": host_port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-host", "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": name,
                                 "endpointslice.kubernetes.io/managed-by": "matchenv-dev"}},
         "addressType": "IPv4",
         "ports": [{"name": "main", "port": host_port, "protocol": "TCP"}],
         "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}]},
    ]


def clean_broker(broker: ManagementClient) -> None:
    """Remove what earlier environments left on a shared broker (retained queues with their messages, their
    dead-letter and backfill exchanges, users, policies): a new environment of the same name would reuse them, or
    (made by another cluster: their markers name it) be refused them."""
    for queue in broker.list_queues():
        if queue.name.startswith("matches."):
            broker.delete_queue(queue.vhost, queue.name)
    for exchange in broker.list_exchanges():
        if exchange.name.startswith("matches."):
            broker.delete_exchange(exchange.vhost, exchange.name)
    for user in broker.list_users():
        if user.name.startswith(("matchenv.", "matchenv-env.", "matchenv-env-b.", "matchenv-publisher.",
                                 "matchenv-backfill.")):
            broker.delete_user(user.name)
    for policy in broker.list_policies():
        if policy.name.startswith("matchenv."):
            broker.delete_policy(policy.vhost, policy.name)


def count_rows(database_url: str) -> int:
    """Matches stored in a database (0 before the workers created the table)."""
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute("select count(*) from matches").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def count_duplicates(database_url: str) -> int:
    """Rows beyond one per match (the unique key makes this 0 unless the schema lost it)."""
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute("select count(*) - count(distinct external_match_id) from matches").fetchone()
    return int(row[0]) if row else 0


def _minimal_environment(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "matchenv.io/v1alpha1", "kind": "MatchEnvironment",
                            "metadata": {"name": name}, "spec": {"workers": {"image": "matchenv:0.1.0"}}}
    workers = {**body["spec"]["workers"], **spec.pop("workers", {})}
    body["spec"].update(spec)
    body["spec"]["workers"] = {**workers, "databaseSecretRef": {"name": f"matchenv-db-{name}"}}
    return body


@dataclass
class LocalStack:
    """Everything but the control plane, broker and database processes is started by :meth:`start`; those three
    are given (tests share them across a session) or made by :meth:`create`."""

    kubectl: Kubectl
    rabbitmq: RabbitMQNode
    postgres: PostgresServer
    tmp: Path
    root: Path = ROOT
    resync_seconds: float = 3.0
    log: Callable[[str], None] = lambda _msg: None
    node: str = "process"
    operator: OperatorProcess | None = None
    agent: NodeAgent | None = None
    databases: dict[str, str] = field(default_factory=dict)
    label: str = ""  # in database names: several stacks (clusters) on one PostgreSQL

    @functools.cached_property
    def broker(self) -> ManagementClient:
        ep = self.rabbitmq.endpoints
        return ManagementClient(ep.management_url, ep.username, ep.password)

    def install(self) -> None:
        """The CRD, its defaulting policy, the operator's namespace and RBAC, and the broker Secret."""
        kubectl = self.kubectl
        kubectl.run("apply", "-f", str(self.root / "crds"))
        kubectl.wait_established("crd/matchenvironments.matchenv.io")
        wait_until_served(client.CustomObjectsApi(config.new_client_from_config(str(kubectl.cluster.kubeconfig))))
        base = self.root / "manifests/base"
        kubectl.run("apply", "-f", str(base / "namespace.yaml"), "-f", str(base / "rbac.yaml"))
        ep = self.rabbitmq.endpoints
        # The AMQP URL as the workers reach the broker: the Service on a real node, loopback for worker processes.
        url = f"amqp://{_service_host(BROKER_SERVICE)}:{BROKER_SERVICE[2]}" if self.node == "real" \
            else f"amqp://127.0.0.1:{ep.amqp_port}"
        if self.node == "real":
            for manifest in [*host_service(BROKER_SERVICE, ep.amqp_port),
                             *host_service(DATABASE_SERVICE, self.postgres.port)]:
                kubectl.apply(manifest)
        kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "matchenv-broker", "namespace": "matchenv-system"},
                       "stringData": {"url": url, "management-url": ep.management_url,
                                      "username": ep.username, "password": ep.password}})

    def start(self, clean_broker: bool = True) -> LocalStack:
        """Install, start the node and the operator; ``clean_broker``: first remove what earlier runs left on the
        broker (not when another stack, a second cluster, shares it)."""
        self.install()
        if clean_broker:
            self.clean_broker()
        if self.node == "process":
            api = config.new_client_from_config(str(self.kubectl.cluster.kubeconfig))
            self.agent = NodeAgent(api, runner=ProcessRunner(api, self.tmp / "pods")).start()
            wait_for_node_ready(client.CoreV1Api(api), self.agent.name)
            self.log(f"node {self.agent.name} ready; pod logs in {self.tmp / 'pods'}")
        self.start_operator()
        return self

    def clean_broker(self) -> None:
        """Queues and users left by an earlier run would be adopted; start from a clean broker."""
        clean_broker(self.broker)

    def start_operator(self, extra_env: dict[str, str] | None = None) -> OperatorProcess:
        """The operator as a process with the token of its ServiceAccount (so exactly its RBAC); ``extra_env``:
        settings of its administrator (e.g. ``MATCHENV_ADOPT_NAMESPACES``)."""
        sa = service_account_kubeconfig(self.kubectl, "matchenv-system", "matchenv-operator",
                                        self.tmp / "operator.kubeconfig")
        n = len(list(self.tmp.glob("operator-*.log")))
        self.operator = OperatorProcess(sa, self.tmp / f"operator-{n}.log", resync_seconds=self.resync_seconds,
                                        identity=f"local-{n}", extra_env=extra_env).start()
        self.log(f"operator started (log {self.operator.log_path})")
        return self.operator

    def broker_url_from_host(self, url: str) -> str:
        """A workers' AMQP URL (credentials and all) as this host reaches the broker: the ``rabbitmq`` Service's
        name resolves in pods only."""
        parts = urlsplit(url)
        if parts.hostname != _service_host(BROKER_SERVICE):
            return url
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.rabbitmq.endpoints.amqp_port}" if credentials \
            else f"127.0.0.1:{self.rabbitmq.endpoints.amqp_port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def stop(self) -> None:
        self.kubectl.run("delete", "menv", "--all", "--timeout=90s", check=False, timeout=120)
        if self.operator:
            self.operator.stop()
        if self.agent:
            self.agent.stop()

    def database(self, env: str) -> str:
        """The environment's own database (created and put in Secret matchenv-db-<env> on first use)."""
        if env not in self.databases:
            database = f"matchenv_{env}_{self.label}{os.getpid()}"
            self.databases[env] = self.postgres.create_database(database)
            url = self.postgres.pod_url(database, _service_host(DATABASE_SERVICE)) if self.node == "real" \
                else self.databases[env]
            self.kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": f"matchenv-db-{env}", "namespace": "default"},
                                "stringData": {"DATABASE_URL": url}})
        return self.databases[env]

    def apply(self, name: str, **spec: Any) -> None:
        """Apply manifests/environments/<name>/matchenvironment.yaml when it exists and no spec is given, else a
        minimal environment."""
        self.database(name)
        example = self.root / "manifests/environments" / name / "matchenvironment.yaml"
        if example.exists() and not spec:
            self.kubectl.run("apply", "-f", str(example))
        else:
            self.kubectl.apply(_minimal_environment(name, **spec))

    def wait_ready(self, *names: str, timeout: float = 180) -> None:
        for name in names:
            self.kubectl.run("wait", "--for=condition=Ready", f"menv/{name}", f"--timeout={int(timeout)}s",
                             timeout=timeout + 30)

    def rows(self, env: str) -> int:
        return count_rows(self.databases[env])

    def duplicates(self, env: str) -> int:
        return count_duplicates(self.databases[env])

    def scrape(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RABBITMQ_URL": self.rabbitmq.endpoints.amqp_url}
        return subprocess.run([sys.executable, "-m", "matchenv.cli", "scrape", "--quiet", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)

    def wait_rows(self, expected: dict[str, int], timeout: float = 180) -> None:
        """Until each environment's database holds the expected rows; on a timeout, the error says what each
        holds, what its queue holds and who consumes it, and ends with its workers' last log lines."""
        try:
            wait_for(lambda: {e: self.rows(e) for e in expected} == expected, timeout=timeout,
                     what=f"rows {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe_environments(list(expected))}") from None

    def describe_environments(self, names: list[str], log_lines: int = 15) -> str:
        """Rows, queue and consumers of each environment, and the tails of its worker pods' logs (process node)."""
        lines = []
        for name in names:
            try:
                status = self.kubectl.get_json("menv", name).get("status") or {}
                queue = self.broker.get_queue("/", str(status.get("queue") or f"matches.{name}"))
                lines.append(f"{name}: rows {self.rows(name)}, queue {queue.name} ready {queue.messages_ready} "
                             f"unacked {queue.messages_unacknowledged} consumers {queue.consumers}, "
                             f"phase {status.get('phase')}")
            except Exception as exc:  # a diagnosis never hides the failure it explains
                lines.append(f"{name}: could not be described: {exc}")
            for log in sorted((self.tmp / "pods").glob(f"default_{name}-workers-*.log")):
                tail = log.read_text(errors="replace").splitlines()[-log_lines:]
                lines.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(lines)

    def queue_depth(self, queue: str, vhost: str = "/") -> int | None:
        try:
            info = self.broker.get_queue(vhost, queue)
        except BrokerNotFound:
            return None
        return info.backlog

    @classmethod
    def create(cls, state_dir: Path, log: Callable[[str], None], node: str = "process",
               resync_seconds: float = 3.0, stats_interval_ms: int = 500, delete_on_stop: bool = True
               ) -> tuple[LocalStack, Callable[[], None]]:
        """Start a private control plane (with a ``real`` or ``process`` node), RabbitMQ and PostgreSQL under
        ``state_dir``; return the stack (not yet :meth:`start`-ed) and a function that stops all of it (first
        deleting the environments through the operator, unless ``delete_on_stop`` is False)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        real = node == "real"
        stoppers: list[Callable[[], None]] = []

        def shutdown() -> None:
            for stop in reversed(stoppers):
                stop()

        try:
            cluster = LocalCluster(state_dir / "cluster", log=log, node_ip=NODE_IP if real else None).start()
            stoppers.append(cluster.stop)
            if real:
                # the broker and database are host processes: the node imports only what its pods run
                stoppers.append(RealNode(cluster, log=log, images=ImageBuilder().workloads()).start().stop)
            rabbitmq = RabbitMQNode(state_dir / "rabbitmq", name="demo", pod_address=NODE_IP if real else None,
                                    stats_interval_ms=stats_interval_ms, release=release(default_series()))
            stoppers.append(rabbitmq.stop)
            rabbitmq.start()
            log(f"RabbitMQ on 127.0.0.1:{rabbitmq.endpoints.amqp_port} "
                f"(management {rabbitmq.endpoints.management_url})")
            postgres = PostgresServer(state_dir / "postgres", pod_network=(NODE_IP, POD_CIDR) if real else None)
            stoppers.append(postgres.close)
            postgres.start()
            log(f"PostgreSQL on 127.0.0.1:{postgres.port}")
        except BaseException:
            shutdown()
            raise
        stack = cls(Kubectl(cluster), rabbitmq, postgres, state_dir, log=log, node=node,
                    resync_seconds=resync_seconds)
        if delete_on_stop:
            stoppers.append(stack.stop)
        return stack, shutdown

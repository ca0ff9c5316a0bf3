"""Which dead-letter queue ``matchenv dlq ENV`` means: the MatchEnvironment read from the Kubernetes API, its
queue names from the same naming the operator uses, and the broker's admin connection from the same Secret."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from matchenv.api import API_GROUP, API_VERSION, PLURAL, MatchEnvironmentSpec
from matchenv.connection import BrokerConfigError, BrokerConnection, read_connection, worker_amqp_url
from matchenv.identity import ClusterIdentityError, cluster_identity
from matchenv.kubeconfig import KubeconfigError, api_client
from matchenv.topology.client import BrokerError, ManagementClient
from matchenv.topology.desired import DesiredTopology, desired_topology
from matchenv.topology.planner import check_ownership

DEFAULT_BROKER_SECRET = "matchenv-system/matchenv-broker"


class TargetError(Exception):
    """The environment cannot be acted on; ``usage`` is True when the input is at fault (exit code 2)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    queue: str
    dead_letter_queue: str
    url: str = field(repr=False)  # AMQP, as the broker's admin, in the environment's vhost

    @property
    def where(self) -> str:
        return f"MatchEnvironment {self.namespace}/{self.name}"


def resolve(name: str, namespace: str | None, kubeconfig: str | None = None, context: str | None = None,
            broker_secret: str | None = None, broker_url: str | None = None, timeout: float = 10.0) -> Target:
    """The environment ``name`` and its dead-letter queue; ``broker_url`` (e.g. a port-forward) replaces the host
    of the Secret's AMQP URL, which names the broker as pods reach it."""
    try:
        api, default_namespace = api_client(kubeconfig, context)
    except KubeconfigError as exc:
        raise TargetError(str(exc), usage=True) from exc
    namespace = namespace or default_namespace
    core = client.CoreV1Api(api)
    try:
        env = _unless_missing(lambda: client.CustomObjectsApi(api).get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, _request_timeout=timeout))
    except ApiException as exc:
        raise TargetError(f"cannot read MatchEnvironment {namespace}/{name}: {exc.status} {exc.reason}") from exc
    except Exception as exc:  # connection refused, DNS, timeout
        raise TargetError(f"cannot reach the Kubernetes API: {exc.__class__.__name__} {exc}") from exc
    if env is None:
        raise TargetError(f"MatchEnvironment {name!r} not found in namespace {namespace!r} "
                          "(kubectl get matchenvironments -A lists them)", usage=True)
    try:
        spec = MatchEnvironmentSpec.model_validate(env.get("spec") or {})
    except ValidationError as exc:
        raise TargetError(f"MatchEnvironment {namespace}/{name} has an invalid spec: {exc.errors()[0]['msg']}") \
            from exc
    if not spec.queue.dead_letter:
        raise TargetError(f"MatchEnvironment {namespace}/{name} keeps no dead-letter queue "
                          "(spec.queue.deadLetter: false)", usage=True)
    try:
        cluster = cluster_identity(core, os.environ.get("MATCHENV_CLUSTER_ID", ""), timeout)
    except ClusterIdentityError as exc:
        raise TargetError(f"{exc} (as the operator's is: the ownership markers name it)") from exc
    desired = desired_topology(cluster, namespace, name, spec)
    ref = spec.broker.connection_secret_ref
    secret_ns, secret_name = (namespace, ref.name) if ref is not None else (
        broker_secret or os.environ.get("MATCHENV_BROKER_SECRET") or DEFAULT_BROKER_SECRET).split("/", 1)
    try:
        secret = _unless_missing(lambda: core.read_namespaced_secret(secret_name, secret_ns, _request_timeout=timeout))
        connection = read_connection(None if secret is None else api.sanitize_for_serialization(secret), secret_ns,
                                     secret_name)
    except ApiException as exc:
        raise TargetError(f"cannot read the broker Secret {secret_ns}/{secret_name}: {exc.status} {exc.reason} "
                          "(its admin credentials are needed to read a dead-letter queue)") from exc
    except BrokerConfigError as exc:
        raise TargetError(str(exc)) from exc
    check_owner(env, desired, connection)
    base = connection.url
    if broker_url:
        given = urlsplit(broker_url)
        if not given.hostname:
            raise TargetError(f"--broker-url {broker_url!r} names no host (e.g. amqp://127.0.0.1:5672)", usage=True)
        base = broker_url
    url = worker_amqp_url(base, connection.username, connection.password, desired.vhost)
    return Target(namespace, name, desired.queue.name, desired.names.dead_letter_queue, url)


def _unless_missing(read: Callable[[], Any]) -> Any:
    """What ``read`` returns, None for a 404."""
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def check_owner(env: dict[str, Any], desired: DesiredTopology, connection: BrokerConnection) -> None:
    """Refuse an environment whose queue or dead-letter queue is not its own (another environment's, or a
    hand-wired one it may not adopt): the broker's ownership markers decide, as they do for the operator. Where the
    management API cannot be reached (a port-forward to AMQP only), the operator's verdict stands in: TopologyReady
    True at the environment's current generation."""
    where = f"MatchEnvironment {desired.names.namespace}/{desired.names.name}"
    client = ManagementClient(connection.management_url, connection.username, connection.password)
    try:
        refusal = check_ownership(desired, client.snapshot(desired.scope()))
    except BrokerError as exc:
        conditions = {c.get("type"): c for c in (env.get("status") or {}).get("conditions") or []}
        topology = conditions.get("TopologyReady") or {}
        if topology.get("status") == "True" and \
                topology.get("observedGeneration") == (env.get("metadata") or {}).get("generation"):
            return
        raise TargetError(f"cannot tell whether {where} owns queue {desired.queue.name}: the management API "
                          f"does not answer ({exc}) and the operator has not reported its topology ready "
                          f"({topology.get('reason', 'no status yet')})") from exc
    finally:
        client.close()
    if refusal is not None:
        raise TargetError(f"{where} does not own its queue, so its dead letters are not its to act on: "
                          f"{refusal.message} ({refusal.reason})", usage=True)

"""Pure builders of the Kubernetes objects the operator owns: the broker Secret and the worker Deployment."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from matchenv import contracts as c
from matchenv.api import API_GROUP, API_VERSION, KIND, MatchEnvironmentSpec
from matchenv.connection import worker_amqp_url
from matchenv.naming import (
    BACKFILL_COMPONENT,
    COMPONENT_LABEL,
    ENV_LABEL,
    EVENTS_COMPONENT,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    REPLAY_LABEL,
    SECRETS_HASH_ANNOTATION,
    EnvironmentNames,
)

Obj = dict[str, Any]
METRICS_PORT = c.WORKER_METRICS_PORT
FIELD_MANAGER = "matchenv-operator"


def owner_reference(name: str, uid: str) -> Obj:
    """Makes the object go with its MatchEnvironment (garbage collection) and marks the operator as controller."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_broker_secret(names: EnvironmentNames, owner: Obj, broker_url: str, password: str, vhost: str,
                        annotations: dict[str, str] | None = None, user: str = "") -> Obj:
    """Secret ``<env>-broker``: the worker's AMQP URL with its own least-privilege user (``user``: which of its two;
    "" the first)."""
    user = user or names.broker_user
    url = worker_amqp_url(broker_url, user, password, vhost)
    metadata: Obj = {
        "name": names.broker_secret,
        "namespace": names.namespace,
        "labels": names.labels,
        "ownerReferences": [owner],
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {c.WORKER_SECRET_URL: url, c.WORKER_SECRET_USERNAME: user,
                       c.WORKER_SECRET_PASSWORD: password},
    }


def secret_data_hash(*datas: Mapping[str, str] | None) -> str:
    """A stable hash of Secrets' ``data``; it changes when any key or value changes."""
    digest = hashlib.sha256()
    for data in datas:
        digest.update(json.dumps(dict(sorted((data or {}).items())), sort_keys=True).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


CONTAINER_SECURITY: Obj = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY: Obj = {"seccompProfile": {"type": "RuntimeDefault"}}
BACKFILL_ACTIVE_SECONDS = 3600  # a backfill Job that runs longer is stopped (and retried as a failure)
BACKFILL_POD_RETRIES = 2  # pods a Job retries before it fails; the operator then starts a new Job, later


def _place(pod_spec: Obj, spec: MatchEnvironmentSpec) -> None:
    """The workers' node selector and tolerations (the backfill runs where the workers may)."""
    if spec.workers.node_selector:
        pod_spec["nodeSelector"] = dict(spec.workers.node_selector)
    if spec.workers.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.workers.tolerations]


def backfill_labels(names: EnvironmentNames, component: str = BACKFILL_COMPONENT) -> dict[str, str]:
    """Not the workers' selector: a backfill pod is never counted as a worker."""
    return {ENV_LABEL: names.name, COMPONENT_LABEL: component, "app.kubernetes.io/name": "matchenv",
            "app.kubernetes.io/instance": names.name, MANAGED_BY_LABEL: MANAGED_BY}


def build_backfill_secret(names: EnvironmentNames, owner: Obj, broker_url: str, password: str, vhost: str) -> Obj:
    """Secret ``<env>-backfill``: the backfill Job's AMQP URL with its own user (reads the archive, writes the
    environment's backfill exchange)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.backfill_secret, "namespace": names.namespace, "labels": backfill_labels(names),
                     "ownerReferences": [owner]},
        "type": "Opaque",
        "stringData": {c.WORKER_SECRET_URL: worker_amqp_url(broker_url, names.backfill_user, password, vhost),
                       c.WORKER_SECRET_USERNAME: names.backfill_user, c.WORKER_SECRET_PASSWORD: password},
    }


def build_events_secret(names: EnvironmentNames, owner: Obj, broker_url: str, password: str, vhost: str) -> Obj:
    """Secret ``<env>-events``: what a Flower Deployment (``matchenv flower``) needs to read this environment's task
    events, with a user that can read them and nothing else."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": names.events_secret, "namespace": names.namespace,
                     "labels": backfill_labels(names, EVENTS_COMPONENT), "ownerReferences": [owner]},
        "type": "Opaque",
        "stringData": {c.WORKER_SECRET_URL: worker_amqp_url(broker_url, names.events_user, password, vhost),
                       c.WORKER_SECRET_USERNAME: names.events_user, c.WORKER_SECRET_PASSWORD: password,
                       c.EVENTS_SECRET_EXCHANGE: names.events_exchange},
    }


def build_backfill_job(names: EnvironmentNames, spec: MatchEnvironmentSpec, owner: Obj, job: str, archive: str,
                       start: str, mandatory: bool, replay: str = "backfill") -> Obj:
    """A one-shot Job running ``matchenv backfill``: the archive from ``start`` into this environment's queue
    (``replay``: which replay it is, spec.backfill's or a pause's catch-up, in its labels)."""
    container: Obj = {
        "name": "backfill",
        "image": spec.workers.image,
        "command": ["matchenv", "backfill"],
        "args": ["--archive", archive, "--exchange", names.backfill_exchange, "--from", start,
                 "--mandatory" if mandatory else "--no-mandatory"],
        "env": [{"name": c.ENV_BROKER_URL_FALLBACK,
                 "valueFrom": {"secretKeyRef": {"name": names.backfill_secret, "key": c.WORKER_SECRET_URL}}},
                {"name": c.ENV_ENVIRONMENT, "value": names.name},  # whose lines its logs are
                {"name": c.ENV_OWNER, "value": names.owner}],
        "securityContext": CONTAINER_SECURITY,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "terminationMessagePolicy": "File",
    }
    pod_spec: Obj = {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": POD_SECURITY, "terminationGracePeriodSeconds": 10}
    _place(pod_spec, spec)
    labels = backfill_labels(names)
    job_labels = {**labels, REPLAY_LABEL: replay}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job, "namespace": names.namespace, "labels": job_labels, "ownerReferences": [owner]},
        "spec": {
            "backoffLimit": BACKFILL_POD_RETRIES,
            "activeDeadlineSeconds": BACKFILL_ACTIVE_SECONDS,
            "ttlSecondsAfterFinished": 86_400,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


READINESS_COMMAND = ("python3", "-m", "matchenv.probe", "/healthz")


def build_deployment(
    names: EnvironmentNames,
    spec: MatchEnvironmentSpec,
    owner: Obj,
    replicas: int,
    secrets_hash: str,
) -> Obj:
    """Deployment ``<env>-workers``: ``matchenv worker`` on the environment's queue, wired to its Secrets."""
    workers = spec.workers
    env: list[Obj] = [
        {"name": c.ENV_BROKER_URL,
         "valueFrom": {"secretKeyRef": {"name": names.broker_secret, "key": c.WORKER_SECRET_URL}}},
        {"name": c.ENV_ENVIRONMENT, "value": names.name},
        {"name": c.ENV_OWNER, "value": names.owner},
        {"name": c.ENV_QUEUE, "value": names.queue},
        {"name": c.ENV_QUEUE_TYPE, "value": spec.queue.type.value},
        {"name": c.ENV_DEAD_LETTER_EXCHANGE,
         "value": names.dead_letter_exchange if spec.queue.dead_letter else ""},
        {"name": c.ENV_METRICS_PORT, "value": str(METRICS_PORT)},
        # only when on: turning it on or off rolls the workers, and an upgrade leaves the others as they are
        *([{"name": c.ENV_TASK_EVENTS, "value": "true"}] if workers.task_events else []),
    ]
    env += [e.model_dump(by_alias=True, exclude_none=True) for e in workers.env or []]
    container: Obj = {
        "name": "worker",
        "image": workers.image,
        "command": ["matchenv", "worker"],
        "args": ["--queue", names.queue, "--concurrency", str(workers.concurrency)],
        "env": env,
        "envFrom": [{"secretRef": {"name": workers.database_secret_ref.name}}],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        # exec, not httpGet: the kubelet keeps an exec probe's output in its Unhealthy event, and that output says
        # why (e.g. "holding messages: the database refuses every write ..."), which status then shows
        "readinessProbe": {
            "exec": {"command": list(READINESS_COMMAND)},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        # liveness waits for this: loading Celery on a busy node may take longer than any fixed delay
        "startupProbe": {
            "httpGet": {"path": "/livez", "port": "metrics"},
            "periodSeconds": 2,
            "timeoutSeconds": 5,
            "failureThreshold": 60,
        },
        # a storing thread stuck in a call that never returns (a frozen database) is restarted; its messages go back
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": CONTAINER_SECURITY,
    }
    if workers.resources is not None:
        container["resources"] = workers.resources.model_dump(by_alias=True, exclude_none=True)
    pod_spec: Obj = {
        "containers": [container],
        # Celery finishes the message in hand on SIGTERM; unacknowledged ones go back to the queue anyway.
        "terminationGracePeriodSeconds": 60,
        "automountServiceAccountToken": False,
        "securityContext": POD_SECURITY,
    }
    _place(pod_spec, spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names.deployment,
            "namespace": names.namespace,
            "labels": names.labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": names.selector_labels},
            "template": {
                "metadata": {"labels": names.labels, "annotations": {SECRETS_HASH_ANNOTATION: secrets_hash}},
                "spec": pod_spec,
            },
        },
    }


def drift(desired: Any, live: Any, path: str = "") -> str | None:
    """The first field ``desired`` sets that ``live`` does not match (server-side defaults are ignored), or None."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return path or "."
        for key, value in desired.items():
            found = drift(value, live.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return path
        for i, (d, v) in enumerate(zip(desired, live, strict=True)):
            found = drift(d, v, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(desired, str) and isinstance(live, str | int):
        same = desired == str(live) or _same_quantity(desired, str(live))
        return None if same else path
    return None if desired == live else path


def _same_quantity(a: str, b: str) -> bool:
    from kubernetes.utils import parse_quantity

    try:
        return bool(parse_quantity(a) == parse_quantity(b))
    except ValueError:
        return False

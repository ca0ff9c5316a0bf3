"""Shared test data: a valid MatchEnvironment and invalid variants, each naming the field that is wrong.

The unit tests feed these to the pydantic models and the e2e tests to the real API server, so the two stay in
agreement about what is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

CLUSTER = "c1"  # the cluster identity where no API server gives one (unit and broker-only tests)


def environment(name: str = "staging", **spec: Any) -> dict[str, Any]:
    """A minimal valid MatchEnvironment manifest; keyword arguments replace top-level spec keys."""
    body: dict[str, Any] = {
        "apiVersion": "matchenv.io/v1alpha1",
        "kind": "MatchEnvironment",
        "metadata": {"name": name},
        "spec": {"workers": {"image": "matchenv:0.1.0", "databaseSecretRef": {"name": f"matchenv-db-{name}"}}},
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def _workers(**fields: Any) -> dict[str, Any]:
    workers: dict[str, Any] = {"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "db"}}
    workers.update(fields)
    return {k: v for k, v in workers.items() if v is not None}


@dataclass(frozen=True)
class InvalidCase:
    id: str
    manifest: dict[str, Any]
    field: str  # the field path the API server's error must name, e.g. "spec.workers.image"
    model_loc: str  # what pydantic's error must mention (dotted location or message text)


INVALID_CASES: list[InvalidCase] = [
    InvalidCase("missing-image", environment(workers={"databaseSecretRef": {"name": "db"}}),
                "spec.workers.image", "workers.image"),
    InvalidCase("unknown-exchange-type", environment(exchange={"type": "direct"}),
                "spec.exchange.type", "exchange.type"),
    InvalidCase("negative-replicas", environment(workers=_workers(replicas=-1)),
                "spec.workers.replicas", "workers.replicas"),
    InvalidCase("min-above-max-replicas",
                environment(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}),
                "spec.autoscaling.minReplicas", "minReplicas must be <= maxReplicas"),
    InvalidCase("invalid-queue-name", environment(queue={"name": "bad queue!"}),
                "spec.queue.name", "queue.name"),
    InvalidCase("unknown-deletion-policy", environment(deletionPolicy="Orphan"),
                "spec.deletionPolicy", "deletionPolicy"),
    InvalidCase("expire-after-in-words", environment(expireAfter="30 seconds"), "spec.expireAfter", "expireAfter"),
    InvalidCase("unknown-expire-from", environment(expireAfter="1h", expireFrom="Birth"),
                "spec.expireFrom", "expireFrom"),
    InvalidCase("database-secret-without-name", environment(workers=_workers(databaseSecretRef={})),
                "spec.workers.databaseSecretRef.name", "workers.databaseSecretRef.name"),
    InvalidCase("missing-database-secret", environment(workers=_workers(databaseSecretRef=None)),
                "spec.workers.databaseSecretRef", "workers.databaseSecretRef"),
    InvalidCase("topic-without-routing-keys", environment(exchange={"type": "topic"}),
                "spec.queue.routingKeys", "needs at least one queue.routingKeys"),
    InvalidCase("reserved-exchange-name", environment(exchange={"name": "amq.fanout"}),
                "spec.exchange.name", "must not start with 'amq.'"),
    InvalidCase("backfill-since-overflow", environment(backfill={"since": "18000000h"}), "spec.backfill.since",
                "at most 87600h"),
    *(InvalidCase(f"derived-queue-name-{name}", environment(queue={"name": name}), "spec.queue.name",
                  "matchenv derives those names")
      for name in ("matches.dev.dlx", "matches.dev.dlq", "matches.dev.backfill", "matches-fanout.topic",
                   "matches-fanout.archive")),
    InvalidCase("zero-concurrency", environment(workers=_workers(concurrency=0)),
                "spec.workers.concurrency", "workers.concurrency"),
    InvalidCase("zero-ttl", environment(queue={"messageTTLSeconds": 0}),
                "spec.queue.messageTTLSeconds", "queue.messageTTLSeconds"),
    InvalidCase("unknown-queue-type", environment(queue={"type": "stream"}),
                "spec.queue.type", "queue.type"),
    InvalidCase("overflow-without-max-length", environment(queue={"overflow": "reject-publish"}),
                "spec.queue.overflow", "queue.overflow needs queue.maxLength"),
    InvalidCase("unknown-overflow", environment(queue={"maxLength": 10, "overflow": "drop-tail"}),
                "spec.queue.overflow", "queue.overflow"),
    InvalidCase("paused-not-a-bool", environment(paused="yes please"),
                "spec.paused", "paused"),
    InvalidCase("unknown-pause-mode", environment(paused=True, pauseMode="Drop"), "spec.pauseMode", "pauseMode"),
    InvalidCase("rotate-every-too-often", environment(broker={"rotateEvery": "30s"}),
                "spec.broker.rotateEvery", "at least 60s"),
    InvalidCase("rotate-every-with-a-team-password",
                environment(broker={"rotateEvery": "720h", "passwordSecretRef": {"name": "team-pw"}}),
                "spec.broker.rotateEvery", "your team's Secret decides"),
    InvalidCase("env-value-and-value-from",
                environment(workers=_workers(env=[{"name": "X", "value": "1",
                                                   "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])),
                "spec.workers.env[0]", "value or valueFrom, not both"),
    InvalidCase("env-value-from-two-sources",
                environment(workers=_workers(env=[{"name": "X", "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.name"},
                    "secretKeyRef": {"name": "s", "key": "k"}}}])),
                "spec.workers.env[0].valueFrom", "exactly one of secretKeyRef"),
    InvalidCase("env-secret-ref-without-key",
                environment(workers=_workers(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}])),
                "spec.workers.env[0].valueFrom.secretKeyRef.key", "secretKeyRef.key"),
    InvalidCase("resources-not-a-quantity",
                environment(workers=_workers(resources={"limits": {"memory": "lots"}})),
                "spec.workers.resources.limits.memory", "resources.limits.memory"),
]

"""Pure builders of the worker Deployment and the broker Secret, and the drift check."""

from __future__ import annotations

from typing import Any

from matchenv.api import MatchEnvironmentSpec
from matchenv.connection import worker_amqp_url
from matchenv.naming import SECRETS_HASH_ANNOTATION, EnvironmentNames
from matchenv.operator.builders import (
    build_broker_secret,
    build_deployment,
    drift,
    owner_reference,
    secret_data_hash,
)
from tests.cases import CLUSTER, environment

NAMES = EnvironmentNames(CLUSTER, "default", "staging", "matches.staging")
OWNER = owner_reference("staging", "uid-1")


def deployment(**spec: Any) -> dict[str, Any]:
    parsed = MatchEnvironmentSpec.model_validate(environment(**spec)["spec"])
    return build_deployment(NAMES, parsed, OWNER, parsed.workers.replicas, "hash-1")


def container(d: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = d["spec"]["template"]["spec"]["containers"][0]
    return result


def test_deployment_runs_the_worker_on_its_queue_with_its_secrets() -> None:
    d = deployment()
    assert d["metadata"]["name"] == "staging-workers"
    assert d["metadata"]["ownerReferences"] == [OWNER]
    assert d["spec"]["replicas"] == 2
    c = container(d)
    assert c["image"] == "matchenv:0.1.0"
    assert c["command"] == ["matchenv", "worker"]
    assert c["args"] == ["--queue", "matches.staging", "--concurrency", "1"]
    env = {e["name"]: e for e in c["env"]}
    assert env["CELERY_BROKER_URL"]["valueFrom"] == {"secretKeyRef": {"name": "staging-broker", "key": "url"}}
    assert env["MATCHENV_QUEUE_TYPE"]["value"] == "classic"
    assert env["MATCHENV_DEAD_LETTER_EXCHANGE"]["value"] == "matches.staging.dlx"
    assert c["envFrom"] == [{"secretRef": {"name": "matchenv-db-staging"}}]
    assert d["spec"]["template"]["metadata"]["annotations"] == {SECRETS_HASH_ANNOTATION: "hash-1"}
    assert d["spec"]["selector"]["matchLabels"] == NAMES.selector_labels
    assert NAMES.selector_labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_every_worker_field_reaches_the_pod() -> None:
    d = deployment(
        workers={
            "image": "registry.local/w:2", "replicas": 4, "concurrency": 3,
            "databaseSecretRef": {"name": "db"},
            "env": [{"name": "LOG_LEVEL", "value": "debug"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}],
            "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}},
            "nodeSelector": {"pool": "workers"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "w", "effect": "NoSchedule"}],
        },
        queue={"type": "quorum", "deadLetter": False},
    )
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert d["spec"]["replicas"] == 4
    assert c["image"] == "registry.local/w:2"
    assert c["args"][-1] == "3"
    env = {e["name"]: e for e in c["env"]}
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "debug"}
    assert env["TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "t", "key": "k"}}
    assert env["MATCHENV_QUEUE_TYPE"]["value"] == "quorum"
    assert env["MATCHENV_DEAD_LETTER_EXCHANGE"]["value"] == ""
    assert c["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}}
    assert c["envFrom"] == [{"secretRef": {"name": "db"}}]
    assert pod["nodeSelector"] == {"pool": "workers"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "w", "effect": "NoSchedule"}]


def test_deployment_is_locked_down() -> None:
    d = deployment()
    pod = d["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    sc = container(d)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_broker_secret_holds_the_workers_url() -> None:
    secret = build_broker_secret(NAMES, OWNER, "amqp://rabbitmq.matchenv-system:5672", "p@ss/word", "/")
    assert secret["metadata"]["name"] == "staging-broker"
    assert secret["metadata"]["ownerReferences"] == [OWNER]
    data = secret["stringData"]
    assert data["url"] == "amqp://matchenv-env.c1.default.staging:p%40ss%2Fword@rabbitmq.matchenv-system:5672/%2F"
    assert data["username"] == "matchenv-env.c1.default.staging"
    assert data["password"] == "p@ss/word"


def test_worker_url_drops_admin_credentials_and_sets_the_vhost() -> None:
    url = worker_amqp_url("amqps://admin:admin@broker:5671/other?heartbeat=30", "u", "p", "team a")
    assert url == "amqps://u:p@broker:5671/team%20a?heartbeat=30"
    assert worker_amqp_url("amqp://[::1]:5672", "u", "p", "/") == "amqp://u:p@[::1]:5672/%2F"


def test_a_clusters_nodes_each_get_the_workers_credentials_in_order() -> None:
    url = worker_amqp_url("amqp://admin:x@n1:5672; amqp://n2:5672;amqp://n3", "u", "p", "/")
    assert url == "amqp://u:p@n1:5672/%2F;amqp://u:p@n2:5672/%2F;amqp://u:p@n3/%2F"  # Celery's failover form


def test_secret_hash_changes_with_any_value_and_not_with_order() -> None:
    base = secret_data_hash({"a": "1", "b": "2"}, {"DATABASE_URL": "x"})
    assert base == secret_data_hash({"b": "2", "a": "1"}, {"DATABASE_URL": "x"})
    assert base != secret_data_hash({"a": "1", "b": "2"}, {"DATABASE_URL": "y"})
    assert base != secret_data_hash({"a": "1"}, {"b": "2", "DATABASE_URL": "x"})


def test_drift_ignores_server_defaults_and_finds_edits() -> None:
    desired = deployment()
    live = {**desired, "status": {"replicas": 2}}
    live["spec"] = {**desired["spec"], "progressDeadlineSeconds": 600, "revisionHistoryLimit": 10}
    assert drift(desired, live) is None
    edited = deployment(workers={"image": "other:1", "databaseSecretRef": {"name": "db"}})
    assert drift(desired, edited) == ".spec.template.spec.containers[0].image"


def test_drift_treats_equal_quantities_as_equal() -> None:
    assert drift({"cpu": "0.5"}, {"cpu": "500m"}) is None
    assert drift({"memory": "1Gi"}, {"memory": "1024Mi"}) is None
    assert drift({"memory": "1Gi"}, {"memory": "1G"}) == ".memory"

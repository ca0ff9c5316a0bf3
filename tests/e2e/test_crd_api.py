"""The MatchEnvironment CRD on a real API server, driven with the real kubectl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from matchenv_devkit.cluster.build import ensure_keda_crds
from tests.cases import INVALID_CASES, InvalidCase, environment
from tests.e2e.conftest import Kubectl

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ROOT / "manifests/environments"


@pytest.fixture
def staging(crd_installed: Kubectl) -> Iterator[Kubectl]:
    crd_installed.run("apply", "-f", str(ENVIRONMENTS / "staging/matchenvironment.yaml"))
    yield crd_installed
    crd_installed.run("delete", "menv", "staging", "--ignore-not-found", "--wait=true")


def test_apply_fills_in_defaults(staging: Kubectl) -> None:
    spec = staging.get_json("menv", "staging")["spec"]
    assert spec["queue"]["name"] == "matches.staging"
    assert spec["queue"]["type"] == "classic"
    assert spec["queue"]["deadLetter"] is True
    assert spec["exchange"] == {"name": "matches-fanout", "type": "fanout"}
    assert spec["deletionPolicy"] == "Retain"
    assert spec["broker"] == {"vhost": "/"}
    assert spec["workers"]["replicas"] == 2
    assert spec["workers"]["concurrency"] == 1
    assert spec["autoscaling"] == {"enabled": False, "minReplicas": 1, "maxReplicas": 10, "messagesPerReplica": 100,
                                   "scaleDownStabilizationSeconds": 60}


def test_yaml_output_shows_the_defaulted_queue(staging: Kubectl) -> None:
    out = staging.run("get", "menv", "staging", "-o", "yaml").stdout
    assert "name: matches.staging" in out
    assert "name: matches-fanout" in out


def test_an_explicit_queue_name_is_kept(crd_installed: Kubectl) -> None:
    crd_installed.apply(environment("custom", queue={"name": "feed.custom"}))
    try:
        assert crd_installed.get_json("menv", "custom")["spec"]["queue"]["name"] == "feed.custom"
    finally:
        crd_installed.run("delete", "menv", "custom", "--ignore-not-found")


@pytest.mark.parametrize("resource", ["matchenvironments", "menv", "matchenvironment.matchenv.io"])
def test_get_prints_the_columns(staging: Kubectl, resource: str) -> None:
    # the QUEUE column is the operator's status.queue (no operator runs here: the status is written as it would)
    staging.run("patch", "menv", "staging", "--subresource=status", "--type=merge", "-p",
                '{"status": {"queue": "matches.staging", "phase": "Pending"}}')
    lines = staging.run("get", resource).stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUEUE", "READY", "MESSAGES", "DEAD", "CONSUMERS", "PHASE", "EXPIRES",
                                "AGE"]
    row = next(line.split() for line in lines[1:] if line.startswith("staging "))
    assert row[1] == "matches.staging"


def test_wide_output_adds_exchange(staging: Kubectl) -> None:
    header = staging.run("get", "menv", "-o", "wide").stdout.splitlines()[0].split()
    assert header[-2:] == ["EXCHANGE", "ERROR"]


def test_explain_documents_the_fields(crd_installed: Kubectl) -> None:
    out = crd_installed.run("explain", "matchenvironment.spec.workers").stdout
    assert "The Celery worker Deployment that consumes this environment's queue." in out or "Worker Deployment" in out
    for field, words in {
        "image": "Container image of the worker",
        "replicas": "Number of worker pods",
        "databaseSecretRef": "database credentials",
        "concurrency": "Celery worker processes per pod",
    }.items():
        assert field in out
        assert words in out, f"no description of {field}"
    nested = crd_installed.run("explain", "menv.spec.queue.deadLetter").stdout
    assert "dead-letter queue '<queue>.dlq'" in nested


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_refused_naming_the_field(crd_installed: Kubectl, case: InvalidCase) -> None:
    result = crd_installed.apply(case.manifest, check=False)
    assert result.returncode != 0, f"{case.id} was accepted"
    assert case.field in result.stderr, result.stderr
    assert crd_installed.run("get", "menv", case.manifest["metadata"]["name"], check=False).returncode != 0


def test_too_long_name_is_refused(crd_installed: Kubectl) -> None:
    result = crd_installed.apply(environment("x" * 41), check=False)
    assert result.returncode != 0
    assert "metadata.name must be at most 40 characters" in result.stderr


def test_unknown_field_is_refused(crd_installed: Kubectl) -> None:
    body = environment("typo")
    body["spec"]["workers"]["imag"] = "oops"
    result = crd_installed.apply(body, check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.workers.imag"' in result.stderr


def test_queue_type_is_immutable(staging: Kubectl) -> None:
    result = staging.run("patch", "menv", "staging", "--type=merge", "-p", '{"spec":{"queue":{"type":"quorum"}}}',
                         check=False)
    assert result.returncode != 0
    assert "spec.queue.type" in result.stderr
    assert "immutable" in result.stderr


def test_queue_name_is_immutable(staging: Kubectl) -> None:
    result = staging.run("patch", "menv", "staging", "--type=merge", "-p", '{"spec":{"queue":{"name":"other"}}}',
                         check=False)
    assert result.returncode != 0
    assert "spec.queue.name" in result.stderr


def test_scale_sets_worker_replicas(staging: Kubectl) -> None:
    staging.run("scale", "menv", "staging", "--replicas=5")
    assert staging.get_json("menv", "staging")["spec"]["workers"]["replicas"] == 5
    raw = staging.run("get", "--raw", "/apis/matchenv.io/v1alpha1/namespaces/default/matchenvironments/staging/scale")
    scale = json.loads(raw.stdout)
    assert scale["spec"]["replicas"] == 5


def test_examples_are_accepted(crd_installed: Kubectl) -> None:
    try:
        for name in ("prod", "dev", "staging"):
            crd_installed.run("apply", "-f", str(ENVIRONMENTS / name / "matchenvironment.yaml"))
        names = crd_installed.run("get", "menv", "-o", "name").stdout.split()
        assert {"matchenvironment.matchenv.io/prod", "matchenvironment.matchenv.io/dev",
                "matchenvironment.matchenv.io/staging"} <= set(names)
    finally:
        crd_installed.run("delete", "menv", "prod", "dev", "staging", "--ignore-not-found")


def test_the_documented_keda_scaled_object_targets_the_scale_subresource(staging: Kubectl) -> None:
    """KEDA cannot run here (its module needs a newer Go); its own CRDs check the example, and the scale subresource
    it writes through is driven as its HPA would."""
    staging.run("apply", "--server-side", "-f", str(ensure_keda_crds()))
    staging.wait_established("crd/scaledobjects.keda.sh", "crd/triggerauthentications.keda.sh")
    example = ROOT / "manifests/examples/keda-staging.yaml"
    result = staging.run("apply", "--dry-run=server", "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr
    assert "scaledobject.keda.sh/staging-workers created (server dry run)" in result.stdout
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    target = next(d for d in docs if d["kind"] == "ScaledObject")["spec"]["scaleTargetRef"]
    env = staging.get_json("menv", target["name"])
    assert (target["apiVersion"], target["kind"]) == (env["apiVersion"], env["kind"])
    assert env["spec"]["autoscaling"]["enabled"] is False  # matchenv's autoscaler off: KEDA's HPA decides
    trigger = next(d for d in docs if d["kind"] == "ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["queueName"] == env["spec"]["queue"]["name"]
    # what KEDA's HPA reads (replicas and the pods' selector) and writes, through the scale subresource
    path = "/apis/matchenv.io/v1alpha1/namespaces/default/matchenvironments/staging/scale"
    staging.run("patch", "menv", "staging", "--subresource=status", "--type=merge", "-p",
                json.dumps({"status": {"selector": "matchenv.io/environment=staging", "replicas": 2}}))
    scale = json.loads(staging.run("get", "--raw", path).stdout)
    assert (scale["spec"]["replicas"], scale["status"]["selector"]) == (2, "matchenv.io/environment=staging")
    staging.run("patch", "menv", "staging", "--subresource=scale", "--type=merge", "-p",
                '{"spec":{"replicas":6}}')
    assert staging.get_json("menv", "staging")["spec"]["workers"]["replicas"] == 6

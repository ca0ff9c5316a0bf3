"""The namespaced install: the operator's ServiceAccount with Roles in the watched namespaces only (and read-only
access to the CRD) serves MatchEnvironments there, and cannot write a Secret anywhere else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from matchenv_devkit.cluster.nodeagent import NodeAgent, wait_for_node_ready
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.cases import environment
from tests.e2e.conftest import Kubectl
from tests.e2e.harness import OperatorProcess, service_account_kubeconfig, wait_for
from tests.e2e.platform import broker_secret, db_secret

ROOT = Path(__file__).resolve().parents[2]
WATCHED = "team-a"


@pytest.fixture(scope="module")
def namespaced(crd_installed: Kubectl, rabbitmq: RabbitMQNode, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Kubectl, OperatorProcess]]:
    kubectl = crd_installed
    tmp = tmp_path_factory.mktemp("namespaced")
    base, namespaced = ROOT / "manifests/base", ROOT / "manifests/namespaced"
    kubectl.run("apply", "-f", str(base / "namespace.yaml"))
    # only the namespaced RBAC: take away the cluster-wide binding other tests use
    kubectl.run("delete", "clusterrolebinding", "matchenv-operator", "--ignore-not-found")
    kubectl.run("delete", "rolebinding", "matchenv-operator-leader", "-n", "matchenv-system", "--ignore-not-found")
    kubectl.run("apply", "-f", str(namespaced / "operator-rbac.yaml"))
    for ns in (WATCHED, "team-b"):
        kubectl.run("create", "namespace", ns, check=False)
    kubectl.run("apply", "-n", WATCHED, "-f", str(namespaced / "watched-namespace.yaml"))
    kubectl.apply(broker_secret(rabbitmq))
    api = config.new_client_from_config(str(kubectl.cluster.kubeconfig))
    agent = NodeAgent(api).start()
    wait_for_node_ready(client.CoreV1Api(api), agent.name)
    sa = service_account_kubeconfig(kubectl, "matchenv-system", "matchenv-operator", tmp / "operator.kubeconfig")
    operator = OperatorProcess(sa, tmp / "operator.log", namespaces=(WATCHED,)).start()
    try:
        yield kubectl, operator
    finally:
        kubectl.run("delete", "menv", "--all", "-n", WATCHED, "--timeout=60s", check=False, timeout=90)
        operator.stop()
        agent.stop()
        kubectl.run("delete", "-n", WATCHED, "-f", str(namespaced / "watched-namespace.yaml"), check=False)
        kubectl.run("delete", "-f", str(namespaced / "operator-rbac.yaml"), check=False)
        kubectl.run("apply", "-f", str(base / "namespace.yaml"), "-f", str(base / "rbac.yaml"))
    forbidden = [line for line in operator.log().splitlines() if "Forbidden" in line or '" 403 ' in line]
    assert forbidden == [], "the namespaced operator hit a permission its Roles lack"


def test_a_namespaced_operator_serves_its_namespace_only(namespaced: tuple[Kubectl, OperatorProcess]) -> None:
    kubectl, operator = namespaced
    for ns in (WATCHED, "team-b"):
        body = environment("scoped", queue={"name": f"matches.scoped-{ns}"})
        body["metadata"]["namespace"] = ns
        secret = db_secret("scoped")
        secret["metadata"]["namespace"] = ns
        kubectl.apply(secret)
        kubectl.apply(body)
    kubectl.run("wait", "--for=condition=Ready", "menv/scoped", "-n", WATCHED, "--timeout=90s", timeout=120)
    assert kubectl.run("get", "secret", "scoped-broker", "-n", WATCHED, check=False).returncode == 0
    # team-b is not watched: nothing is made there, and the operator could not even if it tried
    wait_for(lambda: "scoped" in operator.log(), what="operator active")
    assert kubectl.run("get", "secret", "scoped-broker", "-n", "team-b", check=False).returncode != 0
    assert (kubectl.get_json("menv", "scoped", "-n", "team-b").get("status") or {}) == {}
    can = kubectl.run("auth", "can-i", "create", "secrets", "-n", "team-b",
                      "--as=system:serviceaccount:matchenv-system:matchenv-operator", check=False)
    assert can.stdout.strip() == "no"
    kubectl.run("delete", "menv", "scoped", "-n", "team-b", "--wait=false")
    kubectl.run("patch", "menv", "scoped", "-n", "team-b", "--type=merge", "-p",
                '{"metadata":{"finalizers":[]}}', check=False)

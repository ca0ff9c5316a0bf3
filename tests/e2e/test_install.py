"""matchenv as users install and run it, on the real node (or, with MATCHENV_E2E_KUBECONFIG, any cluster such as
kind's: `make e2e-kind`): `kubectl apply -k manifests/overlays/local` on an empty
cluster (operator Deployment with leader and standby, RabbitMQ and a PostgreSQL per environment, all pods from the
images built here), the scraper as a Job from its CronJob, and what a platform team lives through: the leading
operator pod deleted, a worker pod deleted and a worker container killed mid-run, the RabbitMQ pod deleted mid-run.
Every match is stored exactly once in every environment's database, whatever happens."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from matchenv_devkit.cluster.images import REPO_ROOT
from matchenv_devkit.cluster.install import ENVIRONMENTS, SYSTEM, Installation
from matchenv_devkit.cluster.kubectl import ExternalCluster, Kubectl
from matchenv_devkit.cluster.realnode import RealNode
from matchenv_devkit.cluster.stack import count_rows
from matchenv_devkit.cluster.versions import HelmBinaries
from matchenv_devkit.services.process import wait_for
from tests.e2e.pipeline import real_node_fixture

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built

LEASE_SECONDS = 15  # the operator's default Lease duration


EXTERNAL = os.environ.get("MATCHENV_E2E_KUBECONFIG")  # another cluster (kind), prepared by scripts/e2e-kind.sh


@dataclass(frozen=True)
class Site:
    """Where the install runs, and what differs there: how a container is killed, which images the team's
    database uses."""

    kubectl: Kubectl
    kill_container: Callable[[dict[str, Any]], None]
    overlay: str = "overlays/local"
    images: tuple[dict[str, str], ...] = ({"name": "postgres", "newName": "localhost/matchenv/postgres",
                                           "newTag": "bookworm"},)
    postgres_user: int = 998


def _kill_in_kind(kubectl: Kubectl) -> Callable[[dict[str, Any]], None]:
    def kill(pod: dict[str, Any]) -> None:
        node = pod["spec"]["nodeName"]  # a kind node is a Docker container of that name
        container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
        pid = subprocess.run(["docker", "exec", node, "crictl", "inspect", "--output", "go-template", "--template",
                              "{{.info.pid}}", container], capture_output=True, text=True, check=True).stdout
        subprocess.run(["docker", "exec", node, "kill", "-KILL", pid.strip()], check=True)

    return kill


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if EXTERNAL:
        kubectl = Kubectl(ExternalCluster(Path(EXTERNAL)))
        yield Site(kubectl, _kill_in_kind(kubectl), overlay=os.environ.get("MATCHENV_E2E_OVERLAY", "overlays/kind"),
                   images=(), postgres_user=999)
        return
    for kubectl, real in real_node_fixture(tmp_path_factory.mktemp("install-node")):
        yield Site(kubectl, partial(_kill_on_real_node, real))


def _kill_on_real_node(real: RealNode, pod: dict[str, Any]) -> None:
    os.kill(real.container_pid(pod["status"]["containerStatuses"][0]["containerID"]), signal.SIGKILL)


@pytest.fixture(scope="module")
def installed(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    installation = Installation(site.kubectl, tmp_path_factory.mktemp("install"), overlay=site.overlay, log=print,
                                port_forward=bool(EXTERNAL)).prepare()
    yield installation
    installation.close()


@pytest.fixture(autouse=True)
def _operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "installed" in request.fixturenames:
        print(request.getfixturevalue("installed").operator_logs()[-6000:])


def _feed(installed: Installation, count: int, seed: int, max_rate: int = 0) -> None:
    """What the next Job from the CronJob publishes (the ConfigMap the CronJob reads)."""
    installed.kubectl.run("patch", "configmap", "-n", SYSTEM, "matchenv-scrape", "--type=merge", "-p", json.dumps(
        {"data": {"MATCHENV_SCRAPE_SYNTHETIC": str(count), "MATCHENV_SCRAPE_SEED": str(seed),
                  "MATCHENV_SCRAPE_MAX_RATE": str(max_rate)}}))


def _stored_exactly_once(installed: Installation, total: int) -> None:
    installed.wait_rows({env: total for env in ENVIRONMENTS}, timeout=600)
    assert {env: installed.duplicates(env) for env in ENVIRONMENTS} == {env: 0 for env in ENVIRONMENTS}
    broker = installed.broker()
    assert {env: broker.get_queue("/", f"matches.{env}.dlq").backlog for env in ENVIRONMENTS} == \
        {env: 0 for env in ENVIRONMENTS}


def _worker_pods(kubectl: Kubectl, env: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = kubectl.get_json("pods", "-l", f"matchenv.io/environment={env}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def test_apply_k_on_an_empty_cluster_runs_everything_and_a_scrape_job_fills_every_database(
        installed: Installation) -> None:
    kubectl = installed.kubectl
    installed.apply()
    installed.wait_installed()
    pods = installed.operator_pods()
    assert len(pods) == 2
    leader = wait_for(installed.leader, timeout=60, what="a leading operator pod")
    assert leader in {p["metadata"]["name"] for p in pods}
    installed.wait_ready(timeout=300)  # kubectl wait --for=condition=Ready menv --all
    table = kubectl.run("get", "menv").stdout
    for env in ENVIRONMENTS:  # the QUEUE column, from status
        assert f"matches.{env}" in table, table

    job = installed.scrape_job("s1")
    assert "confirmed 1000" in installed.job_log("s1"), installed.job_log("s1")
    assert job["status"]["succeeded"] == 1
    _stored_exactly_once(installed, 1000)


def test_the_standby_leads_when_the_leader_pod_is_deleted_and_repairs_a_binding(installed: Installation) -> None:
    kubectl = installed.kubectl
    leader = installed.leader()
    standby = next(p["metadata"]["name"] for p in installed.operator_pods() if p["metadata"]["name"] != leader)
    started = time.monotonic()
    kubectl.run("delete", "pod", "-n", SYSTEM, str(leader), "--wait=false")
    wait_for(lambda: installed.leader() == standby, timeout=LEASE_SECONDS + 15, what=f"{standby} to hold the Lease")
    wait_for(lambda: f"leading as {standby}" in kubectl.run("logs", "-n", SYSTEM, standby).stdout,
             timeout=LEASE_SECONDS, what=f"{standby} to start leading")
    took = time.monotonic() - started
    print(f"\nfailover: {standby} leads {took:.1f}s after the leader pod was deleted")
    assert took <= LEASE_SECONDS
    broker = installed.broker()
    broker.unbind_queue("/", "matches-fanout", "matches.dev", "~")
    assert not any(b.source == "matches-fanout" and b.destination == "matches.dev" for b in broker.list_bindings())
    wait_for(lambda: any(b.source == "matches-fanout" for b in broker.list_bindings()
                         if b.destination == "matches.dev"), timeout=60, what="the binding repaired")
    kubectl.run("rollout", "status", "-n", SYSTEM, "deployment/matchenv-operator", "--timeout=120s", timeout=150)


def test_a_worker_pod_deleted_and_a_worker_container_killed_mid_run_lose_nothing(
        installed: Installation, site: Site) -> None:
    kubectl = installed.kubectl
    _feed(installed, 3000, seed=77)
    installed.scrape_job("s2", wait=False)
    wait_for(lambda: installed.rows("prod") >= 1300, timeout=300, what="the run under way in prod", every=0.5)
    victim = _worker_pods(kubectl, "prod")[0]["metadata"]["name"]
    kubectl.run("delete", "pod", victim, "--wait=false")
    dev = _worker_pods(kubectl, "dev")[0]
    site.kill_container(dev)
    print(f"\ndeleted pod {victim}; killed the worker container of {dev['metadata']['name']}")
    installed.wait_job("s2")
    _stored_exactly_once(installed, 4000)
    # the kubelet reports the restart when it next relists the pod's containers: after the run, when it was quick
    wait_for(lambda: kubectl.get_json("pod", dev["metadata"]["name"])["status"]["containerStatuses"][0]
             ["restartCount"] >= 1, timeout=60, what=f"the kubelet to report {dev['metadata']['name']} restarted")


def test_the_rabbitmq_pod_deleted_mid_run_comes_back_with_its_volume_and_the_scrape_resumes(
        installed: Installation) -> None:
    kubectl = installed.kubectl
    claim = kubectl.get_json("pvc", "-n", SYSTEM, "data-rabbitmq-0")["metadata"]["uid"]
    _feed(installed, 3000, seed=78, max_rate=100)  # ~30 s of publishing: the broker goes away mid-run
    installed.scrape_job("s3", wait=False)
    wait_for(lambda: installed.rows("staging") >= 4300, timeout=300, what="the run under way", every=0.5)
    kubectl.run("delete", "pod", "-n", SYSTEM, "rabbitmq-0", "--wait=false")
    print("\ndeleted pod rabbitmq-0")
    kubectl.run("rollout", "status", "-n", SYSTEM, "statefulset/rabbitmq", "--timeout=240s", timeout=260)
    assert kubectl.get_json("pvc", "-n", SYSTEM, "data-rabbitmq-0")["metadata"]["uid"] == claim
    installed.wait_job("s3", timeout=900)
    log = installed.job_log("s3")
    print(log)
    assert "confirmed 3000" in log
    assert "reconnects 0" not in log  # it waited for the broker and went on
    _stored_exactly_once(installed, 7000)


def test_operator_pods_that_were_not_deleted_never_restarted(installed: Installation) -> None:
    """The standby of the first test (leader since the failover) ran through everything above (minutes, at a 10 s
    probe period) and the new standby since the failover: no restart, no failed probe."""
    # the shortened form of "no restart in 5 minutes": the longest-lived pod has been probed at least 8 times
    # (10 s period once its startup probe passed), once as the standby and since the failover as the leader; on a
    # fast run the tests above take less than that, so the rest of it is waited for here
    oldest = max(time.time() - _timestamp(p["status"]["startTime"]) for p in installed.operator_pods())
    time.sleep(max(0.0, 90 - oldest))
    pods = installed.operator_pods()
    assert len(pods) == 2
    assert [s["restartCount"] for p in pods for s in p["status"]["containerStatuses"]] == [0, 0]
    now = time.time()
    ages = [now - _timestamp(p["status"]["startTime"]) for p in pods]
    print(f"\noperator pods up {', '.join(f'{a:.0f}s' for a in sorted(ages))}, restarts 0")
    assert max(ages) >= 90
    events = installed.kubectl.get_json("events", "-n", SYSTEM)["items"]
    names = {p["metadata"]["name"] for p in pods}  # (the deleted leader's probes failed while it stopped)
    probes = [e["message"] for e in events if e["reason"] == "Unhealthy" and e["involvedObject"]["name"] in names]
    # a startup or readiness check while the process is still loading (nothing listening yet) is the only failure
    # allowed: liveness waits for the startup probe, so a slow start on a busy node restarts nothing
    starting = ("Startup", "Readiness")
    assert [m for m in probes if not (m.startswith(starting) and "connection refused" in m)] == []
    logs = installed.operator_logs()
    forbidden = [line for line in logs.splitlines() if "Forbidden" in line or " 403 " in line]
    assert forbidden == [], "the operator hit a permission its RBAC lacks"


# -- Helm --------------------------------------------------------------------------------------------------------
TEAM = "team-h"


def _helm(kubectl: Kubectl, *args: str, timeout: float = 300) -> str:
    helm = HelmBinaries.default().path("helm")
    proc = subprocess.run([str(helm), f"--kubeconfig={kubectl.cluster.kubeconfig}", *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}"
    return proc.stdout


def _released(kubectl: Kubectl) -> list[str]:
    """Every object of release h1 in its namespace, and its cluster-wide ones."""
    kinds = "deployments,replicasets,pods,services,configmaps,secrets,serviceaccounts,roles,rolebindings," \
            "poddisruptionbudgets,cronjobs,jobs,statefulsets,leases"
    named = kubectl.run("get", kinds, "-n", TEAM, "-l", "app.kubernetes.io/instance=h1", "-o", "name").stdout.split()
    cluster = kubectl.run("get", "clusterroles,clusterrolebindings", "-o", "name").stdout.split()
    return named + [n for n in cluster if "h1-" in n]


def test_helm_installs_a_second_team_upgrades_and_uninstalls_leaving_the_crd(installed: Installation, site: Site,
                                                                             tmp_path: Path) -> None:
    kubectl = installed.kubectl
    # one operator per namespace: the cluster-wide operator of the kustomize install steps aside for this test
    kubectl.run("scale", "deployment/matchenv-operator", "-n", SYSTEM, "--replicas=0")
    wait_for(lambda: not installed.operator_pods(), timeout=90, what="the kustomize operator gone")
    kubectl.run("create", "namespace", TEAM)
    # the platform's broker, as a second team uses it: the admin Secret in the team's namespace
    secret = subprocess.run(
        [sys.executable, "-m", "matchenv.cli", "broker-secret", "--namespace", TEAM, "--password-stdin",
         "--url", "amqp://rabbitmq.matchenv-system.svc:5672",
         "--management-url", "http://rabbitmq.matchenv-system.svc:15672"],
        input=installed.passwords["broker"], capture_output=True, text=True, check=True).stdout
    kubectl.run("apply", "-f", "-", stdin=secret)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "watchNamespaces": [TEAM],
        "defaultingPolicy": {"enabled": "false"},  # the kustomize install has it: one per cluster
        "scraper": {"options": {"MATCHENV_SCRAPE_FROM_FILE": None, "MATCHENV_SCRAPE_SYNTHETIC": "300",
                                "MATCHENV_SCRAPE_SEED": "99"}},
    }))
    chart = str(REPO_ROOT / "charts/matchenv")
    _helm(kubectl, "install", "h1", chart, "-n", TEAM, "-f", str(values), "--wait", "--timeout", "180s")
    pods = kubectl.get_json("pods", "-n", TEAM, "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 2
    # one environment and its database, from the same manifests, in the team's namespace under its own queue name
    team = installed.manifests / TEAM
    team.mkdir()
    (team / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": TEAM,
        "resources": ["../environments/dev", "../databases/dev"],
        "images": list(site.images),
        "patches": [
            {"target": {"kind": "MatchEnvironment"}, "patch": yaml.safe_dump(
                [{"op": "add", "path": "/spec/queue", "value": {"name": f"matches.{TEAM}-dev"}}])},
            {"target": {"kind": "StatefulSet"}, "patch": yaml.safe_dump(
                [{"op": "replace", "path": "/spec/template/spec/securityContext/runAsUser",
                  "value": site.postgres_user}])}]}))
    kubectl.run("apply", "-k", str(team))
    kubectl.run("rollout", "status", "-n", TEAM, "statefulset/postgres-dev", "--timeout=180s", timeout=200)
    kubectl.run("wait", "-n", TEAM, "--for=condition=Ready", "menv/dev", "--timeout=180s", timeout=200)
    kubectl.run("create", "job", "-n", TEAM, "--from=cronjob/h1-scrape", "h1-s1")
    kubectl.run("wait", "-n", TEAM, "--for=condition=Complete", "job/h1-s1", "--timeout=300s", timeout=320)
    url = installed.database_url("dev", namespace=TEAM)
    rows: list[int] = []

    def stored() -> bool:
        rows.append(count_rows(url))
        return rows[-1] == 300

    try:
        wait_for(stored, timeout=180, what="300 rows in the team's database", every=1)
    except AssertionError:
        print(kubectl.run("logs", "-n", TEAM, "job/h1-s1", check=False).stdout)
        print(kubectl.run("get", "menv", "-n", TEAM, "dev", "-o", "yaml").stdout)
        print(kubectl.run("logs", "-n", TEAM, "deployment/dev-workers", "--tail=40", check=False).stdout)
        raise AssertionError(f"rows seen: {rows[-5:]}") from None

    before = {p["metadata"]["name"] for p in kubectl.get_json("pods", "-n", TEAM, "-l",
                                                              "app.kubernetes.io/component=operator")["items"]}
    _helm(kubectl, "upgrade", "h1", chart, "-n", TEAM, "--reuse-values", "--set", "operator.resyncSeconds=5",
          "--wait", "--timeout", "180s")
    kubectl.run("rollout", "status", "-n", TEAM, "deployment/h1-operator", "--timeout=180s", timeout=200)
    after = kubectl.get_json("pods", "-n", TEAM, "-l", "app.kubernetes.io/component=operator")["items"]
    live = [p for p in after if not p["metadata"].get("deletionTimestamp")]
    assert {p["metadata"]["name"] for p in live}.isdisjoint(before)  # rolled
    env = {e["name"]: e.get("value") for e in live[0]["spec"]["containers"][0]["env"]}
    assert env["MATCHENV_RESYNC_SECONDS"] == "5"
    owned = [kubectl.run("get", "lease", "h1-operator", "-n", TEAM, "-o", "name", check=False).stdout,
             kubectl.run("get", "secret", "matchenv-publisher", "-n", TEAM, "-o", "name", check=False).stdout]
    assert all(owned), "the operator made its Lease and the publisher Secret"

    _helm(kubectl, "uninstall", "h1", "-n", TEAM, "--wait", "--timeout", "180s")
    kubectl.run("get", "crd", "matchenvironments.matchenv.io")  # kept (documented): the environments stay
    kubectl.run("get", "menv", "-n", TEAM, "dev")
    wait_for(lambda: _released(kubectl) == [], timeout=90, what="nothing of release h1 left")
    # what the operator made for itself went with its Deployment (owner references)
    left = {"secret/matchenv-broker", "secret/matchenv-db-dev", "secret/dev-broker"}  # the team's, the env's
    wait_for(lambda: set(kubectl.run("get", "lease,secret", "-n", TEAM, "-o", "name").stdout.split()) == left,
             timeout=90, what=f"only {sorted(left)} left")


def _timestamp(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

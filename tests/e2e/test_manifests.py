"""The install as users run it, checked by the API servers it targets: every kustomization builds (`kubectl
kustomize`) and passes `kubectl apply --dry-run=server` on the pinned release, and the base installs on the oldest
supported release (1.33: no MutatingAdmissionPolicy there), where a MatchEnvironment still shows its queue once the
operator has run."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from matchenv.topology.client import ManagementClient
from matchenv_devkit.cluster.build import ensure_monitoring_crds
from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.install import fill_env_files
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.operatorproc import OperatorProcess, service_account_kubeconfig
from matchenv_devkit.cluster.stack import clean_broker
from matchenv_devkit.cluster.versions import OLDEST_KUBERNETES_VERSION, ApiServerBinaries, HelmBinaries
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.e2e.platform import broker_secret, db_secret

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("base", "scraper", "environments/prod", "environments/dev", "environments/staging", "databases/prod",
           "overlays/local", "overlays/kind")


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ with the user-filled files written (the repository's tree is never touched)."""
    copy = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(ROOT / "manifests", copy, ignore=shutil.ignore_patterns("*.env"))
    fill_env_files(copy)
    return copy


@pytest.mark.parametrize("target", TARGETS)
def test_every_kustomization_builds_and_the_api_server_accepts_it(crd_installed: Kubectl, manifests: Path,
                                                                    target: str) -> None:
    kubectl = crd_installed
    built = kubectl.run("kustomize", str(manifests / target)).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    assert docs, f"{target} built nothing"
    kubectl.run("apply", "-f", str(manifests / "base/namespace.yaml"))  # objects in it need it to exist
    result = kubectl.run("apply", "-k", str(manifests / target), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr


def test_the_flower_component_turns_prods_task_events_on_and_runs_flower_with_its_events_secret(
        crd_installed: Kubectl, manifests: Path) -> None:
    kubectl = crd_installed
    with_flower = manifests / "with-flower"
    with_flower.mkdir()
    (with_flower / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../environments/prod"], "components": ["../components/flower"]}))
    built = [d for d in yaml.safe_load_all(kubectl.run("kustomize", str(with_flower)).stdout) if d]
    by_kind = {d["kind"]: d for d in built}
    assert by_kind["MatchEnvironment"]["spec"]["workers"]["taskEvents"] is True
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["matchenv", "flower"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e} == {"prod-events"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    result = kubectl.run("apply", "-k", str(with_flower), "--dry-run=server", "-n", "default", check=False)
    assert result.returncode == 0, result.stderr


def test_the_local_overlay_holds_what_users_run(manifests: Path, crd_installed: Kubectl) -> None:
    docs = [d for d in yaml.safe_load_all(crd_installed.run("kustomize", str(manifests / "overlays/local")).stdout)
            if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("CronJob", "matchenv-scrape"), ("Deployment", "matchenv-operator"), ("StatefulSet", "rabbitmq"),
            ("MutatingAdmissionPolicy", "matchenv-queue-name-default")} <= kinds
    assert {n for k, n in kinds if k == "MatchEnvironment"} == {"prod", "dev", "staging"}
    assert {n for k, n in kinds if k == "StatefulSet"} == {"rabbitmq", "postgres-prod", "postgres-dev",
                                                           "postgres-staging"}
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert (cron["spec"]["schedule"], cron["spec"]["timeZone"]) == ("0 6 * * *", "Etc/UTC")
    operator = next(d for d in docs if d["kind"] == "Deployment")
    pod = operator["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert operator["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    assert "initialDelaySeconds" not in container["livenessProbe"]  # the startup probe gates it, however slow the start


# -- the oldest supported release ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oldest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    cluster = LocalCluster(tmp_path_factory.mktemp("oldest"), apiserver=ApiServerBinaries.for_version(), log=print)
    try:
        cluster.start()
    except Exception as exc:  # the suite fails, never skips, without it
        cluster.stop()
        pytest.fail(f"the {OLDEST_KUBERNETES_VERSION} API server did not start: {exc}", pytrace=False)
    yield Kubectl(cluster)
    cluster.stop()


def test_the_oldest_release_takes_the_base_and_serves_environments_without_the_policy(
        oldest: Kubectl, manifests: Path, rabbitmq: RabbitMQNode, tmp_path: Path) -> None:
    kubectl = oldest
    versions = json.loads(kubectl.run("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == OLDEST_KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == OLDEST_KUBERNETES_VERSION
    kubectl.run("create", "namespace", "matchenv-system")
    result = kubectl.run("apply", "-k", str(manifests / "base"), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr
    # the defaulting policy is a kind this release does not serve: it is an optional component for that reason
    with_policy = manifests / "with-defaulting"
    with_policy.mkdir()
    (with_policy / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../base"], "components": ["../components/defaulting"]}))
    refused = kubectl.run("apply", "-k", str(with_policy), "--dry-run=server", check=False)
    assert refused.returncode != 0
    assert "MutatingAdmissionPolicy" in refused.stderr

    kubectl.run("apply", "-k", str(manifests / "base"))
    kubectl.wait_established("crd/matchenvironments.matchenv.io")
    kubectl.apply(broker_secret(rabbitmq))
    kubectl.apply(db_secret("staging"))
    sa = service_account_kubeconfig(kubectl, "matchenv-system", "matchenv-operator", tmp_path / "sa.kubeconfig")
    ep = rabbitmq.endpoints
    broker = ManagementClient(ep.management_url, ep.username, ep.password)
    operator = OperatorProcess(sa, tmp_path / "operator.log", resync_seconds=2).start()
    try:
        kubectl.run("apply", "-f", str(manifests / "environments/staging/matchenvironment.yaml"))
        spec = kubectl.get_json("menv", "staging")["spec"]
        assert "name" not in spec.get("queue", {})  # nobody defaulted it at admission

        def queue_column() -> str | None:
            header, row = kubectl.run("get", "menv", "staging").stdout.splitlines()[:2]
            start = header.index("QUEUE")
            end = header.index(header[start:].split()[1], start)  # where the next column begins
            return row[start:end].strip() or None

        assert wait_for(queue_column, timeout=60, what="the QUEUE column") == "matches.staging"
        assert any(b.destination == "matches.staging" for b in broker.list_bindings())
    finally:
        operator.stop()  # this API server goes with the test; the shared broker is cleaned for the next ones
        clean_broker(broker)
    assert "Forbidden" not in operator.log_path.read_text(errors="replace")


# -- the Helm chart ----------------------------------------------------------------------------------------------
CHART = ROOT / "charts/matchenv"
VALUE_SETS = {
    "defaults": [],
    "bundled-broker-namespaced": ["--set", "rabbitmq.enabled=true", "--set", "watchNamespaces={team-a,team-b}"],
    "bundled-broker-cluster": ["--set", "rabbitmq.enabled=true", "--set", "rabbitmq.replicas=3"],
    "no-scraper-no-metrics": ["--set", "scraper.enabled=false", "--set", "metrics.enabled=false",
                              "--set", "operator.replicas=1"],
    "monitoring": ["--set", "rabbitmq.enabled=true", "--set", "monitoring.podMonitors=true",
                   "--set", "monitoring.prometheusRule=true", "--set", "monitoring.dashboard=true",
                   "--set", "monitoring.labels.release=kube-prometheus-stack"],
    "secure-metrics": ["--set", "metrics.secure=true", "--set", "metrics.certSecret=operator-tls",
                       "--set", "monitoring.podMonitors=true"],
    "flower": ["--set", "flower.environments[0].name=prod",
               "--set", "flower.environments[1].name=dev", "--set", "flower.environments[1].namespace=team-a"],
}


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HelmBinaries.default().path("helm")), *args], capture_output=True, text=True,
                          timeout=120)


def test_helm_lint_passes() -> None:
    result = _helm("lint", str(CHART), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def monitoring_crds(crd_installed: Kubectl, oldest: Kubectl) -> None:
    """The Prometheus Operator's PodMonitor, ServiceMonitor and PrometheusRule CRDs on both API servers."""
    crds = ensure_monitoring_crds()
    for kubectl in (crd_installed, oldest):
        kubectl.run("apply", "--server-side", "-f", str(crds))
        kubectl.wait_established("crd/podmonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com")


def test_the_monitoring_component_is_what_the_prometheus_operator_accepts(
        crd_installed: Kubectl, monitoring_crds: None, manifests: Path) -> None:
    kubectl = crd_installed
    with_monitoring = manifests / "with-monitoring"
    with_monitoring.mkdir()
    (with_monitoring / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../base"], "components": ["../components/rabbitmq", "../components/monitoring"]}))
    built = [d for d in yaml.safe_load_all(kubectl.run("kustomize", str(with_monitoring)).stdout) if d]
    monitors = {d["metadata"]["name"]: d for d in built if d["kind"] == "PodMonitor"}
    assert set(monitors) == {"matchenv-operator", "matchenv-workers", "matchenv-rabbitmq"}
    rule = next(d for d in built if d["kind"] == "PrometheusRule")
    assert {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]} >= {
        "MatchEnvironmentNotReady", "MatchEnvironmentBehindFeed", "MatchenvNoOperatorLeader"}
    dashboard = next(d for d in built if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "matchenv-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["matchenv.json"])["uid"] == "matchenv"
    # each PodMonitor's port is a named port of the pods it selects
    rabbitmq = next(d for d in built if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "rabbitmq")
    assert "prometheus" in {p["name"] for p in rabbitmq["spec"]["template"]["spec"]["containers"][0]["ports"]}
    operator = next(d for d in built if d["kind"] == "Deployment" and d["metadata"]["name"] == "matchenv-operator")
    assert "metrics" in {p["name"] for p in operator["spec"]["template"]["spec"]["containers"][0]["ports"]}
    kubectl.run("apply", "-f", str(manifests / "base/namespace.yaml"))  # objects in it need it to exist
    result = kubectl.run("apply", "-k", str(with_monitoring), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_the_chart_renders_what_the_api_servers_accept(values: str, crd_installed: Kubectl, oldest: Kubectl,
                                                       monitoring_crds: None) -> None:
    rendered = _helm("template", "rel", str(CHART), "--namespace", "matchenv-system", *VALUE_SETS[values])
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert "Deployment" in kinds
    assert ("CronJob" in kinds) == (values != "no-scraper-no-metrics")
    assert ("StatefulSet" in kinds) == (values in ("bundled-broker-namespaced", "bundled-broker-cluster", "monitoring"))
    assert ("PrometheusRule" in kinds) == (values == "monitoring")
    if values == "monitoring":
        rule = next(d for d in docs if d["kind"] == "PrometheusRule")
        component = yaml.safe_load((ROOT / "manifests/components/monitoring/prometheusrule.yaml").read_text())
        assert rule["spec"] == component["spec"]
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert sum(d["kind"] == "PodMonitor" for d in docs) == 3
        dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-dashboard")
        assert dashboard["data"]["matchenv.json"] == (ROOT / "manifests/components/monitoring/dashboard.json"
                                                      ).read_text()
    if values == "flower":
        flowers = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs
                   if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-flower")}
        assert set(flowers) == {("matchenv-system", "prod-flower"), ("team-a", "dev-flower")}
        env = flowers[("team-a", "dev-flower")]["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e} == {"dev-events"}
    for kubectl in (crd_installed, oldest):
        for ns in ("matchenv-system", "team-a", "team-b"):
            kubectl.run("create", "namespace", ns, check=False)
        result = kubectl.run("apply", "--dry-run=server", "-f", "-", stdin=rendered.stdout, check=False)
        assert result.returncode == 0, result.stderr


def test_secured_metrics_answer_over_tls_only_the_scraper_the_chart_binds(crd_installed: Kubectl,
                                                                           tmp_path: Path) -> None:
    """metrics.secure: the operator, with exactly the chart's RBAC and the certificate the chart made, serves /metrics
    over TLS to the token of the ServiceAccount the chart made for its PodMonitor; no token is 401, another
    ServiceAccount's is 403."""
    import base64
    import ssl

    import requests
    import urllib3

    kubectl, namespace = crd_installed, "sec-metrics"
    rendered = _helm("template", "sec", str(CHART), "--namespace", namespace, "--set", "metrics.secure=true",
                     "--show-only", "templates/rbac.yaml", "--show-only", "templates/metrics-access.yaml")
    assert rendered.returncode == 0, rendered.stderr
    kubectl.run("create", "namespace", namespace)
    kubectl.run("apply", "-f", "-", stdin=rendered.stdout)
    kubectl.run("create", "serviceaccount", "nobody", "-n", namespace)
    sa = service_account_kubeconfig(kubectl, namespace, "sec-operator", tmp_path / "sa.kubeconfig")
    certificate = kubectl.get_json("secret", "sec-operator-metrics-tls", "-n", namespace)["data"]
    certs = tmp_path / "metrics-tls"  # as the chart mounts that Secret
    certs.mkdir()
    for key in ("tls.crt", "tls.key"):
        (certs / key).write_bytes(base64.b64decode(certificate[key]))
    # it never leads (no Lease it may take in matchenv-system): it only serves its metrics here
    operator = OperatorProcess(sa, tmp_path / "operator.log", extra_env={
        "MATCHENV_METRICS_SECURE": "true", "MATCHENV_METRICS_CERT_DIR": str(certs)}).start()
    url = f"https://127.0.0.1:{operator.metrics_port}/metrics"
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def get(token: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(url, headers=headers, verify=False, timeout=10)  # made for the Service's name

    try:
        wait_for(lambda: get().status_code == 401, timeout=60, what="the secured metrics answering")
        served = ssl.get_server_certificate(("127.0.0.1", operator.metrics_port))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert((certs / "tls.crt").read_text())
        with pytest.raises(requests.RequestException):  # no plain HTTP
            requests.get(url.replace("https://", "http://"), timeout=10)
        nobody = kubectl.run("create", "token", "nobody", "-n", namespace).stdout.strip()
        refused = get(nobody)
        assert refused.status_code == 403
        assert f"system:serviceaccount:{namespace}:nobody may not get /metrics" in refused.text
        token = wait_for(lambda: (kubectl.get_json("secret", "sec-metrics-scraper", "-n", namespace).get("data")
                                  or {}).get("token"), timeout=60, what="the scraper's token Secret filled")
        answer = get(base64.b64decode(token).decode())
        assert answer.status_code == 200, answer.text
        assert "matchenv_leader 0.0" in answer.text  # a standby answers too
    finally:
        operator.stop()
        kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)

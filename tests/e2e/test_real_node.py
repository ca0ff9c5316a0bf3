"""What users' pods rely on, on the real node (containerd + runc + kubelet + kube-proxy + CoreDNS): the project's
image runs non-root on a read-only root filesystem, beside a running Docker engine (Debian's docker.io: its
containerd 1.6 shim and runc on PATH, the FORWARD policy DROP); logs, exec and port-forward reach it; the kubelet
restarts a killed container and one whose liveness probe fails; cluster DNS and the API server's ``kubernetes``
Service work with the pod's ServiceAccount token, within exactly its RBAC."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from matchenv.scraper.publisher import DEFAULT_WINDOW
from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.dockerd import DockerEngine, forward_policy
from matchenv_devkit.cluster.images import POSTGRES_IMAGE, RABBITMQ_IMAGE, REPO_ROOT
from matchenv_devkit.cluster.install import fill_env_files
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.nodeconfig import NODE_IP
from matchenv_devkit.cluster.realnode import NodeError, RealNode
from matchenv_devkit.cluster.versions import HelmBinaries
from matchenv_devkit.services.process import free_port, wait_for
from tests.e2e.pipeline import real_node_fixture

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built

ROOT = REPO_ROOT
IMAGE = "matchenv:0.1.0"
NS = "node-tests"


HOST_SHIM = Path("/usr/bin/containerd-shim-runc-v2")  # Debian's containerd 1.6 (a dependency of docker.io)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kubectl, RealNode]]:
    """The node on a host as most hosts with Docker are: Debian's docker.io installed (``make system-deps``) and its
    engine running, which leaves its containerd's shim first on PATH and the FORWARD policy DROP; every test of
    the module runs on it."""
    tmp = tmp_path_factory.mktemp("real-node")
    assert shutil.which("dockerd"), "Debian's docker.io is not installed (make system-deps)"
    assert HOST_SHIM.exists(), "Debian's containerd is not installed (docker.io depends on it)"
    policy = forward_policy()
    engine = DockerEngine(tmp / "docker", progress=print).start()
    # Docker sets the policy DROP when it turns forwarding on itself; a host that forwarded already keeps its own
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    try:
        for kubectl, real in real_node_fixture(tmp):
            kubectl.run("create", "namespace", NS)
            yield kubectl, real
        rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
        assert "matchenv node" not in rules  # the node's accept rules went with it
    finally:
        engine.stop()
        subprocess.run(["iptables", "-P", "FORWARD", policy], check=True)
    assert forward_policy() == policy  # and the engine's stop put the policy back


def _shims_of(socket: Path) -> set[str]:
    """The executables of the running shims that serve the containerd at ``socket``."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(socket) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                exe = os.readlink(proc / "exe")
                if "containerd-shim" in exe:
                    found.add(exe)
        except OSError:
            continue
    return found


def test_the_node_runs_its_own_shim_and_runc_and_forwards_its_pods_beside_docker(
        node: tuple[Kubectl, RealNode]) -> None:
    kubectl, real = node
    assert forward_policy() == "DROP"  # the engine's doing
    assert shutil.which("containerd-shim-runc-v2") == str(HOST_SHIM)  # the PATH a node could have been misled by
    # CoreDNS answered (the node's start waited for it) and the DNS test below goes pod → Service → pod
    assert kubectl.get_json("deployment", "coredns", "-n", "kube-system")["status"].get("readyReplicas")
    assert _shims_of(real.paths.containerd_socket) == {str(real.binaries.path("containerd-shim-runc-v2"))}


def _pod(name: str, command: str, **spec: Any) -> dict[str, Any]:
    """A pod of the project's image as the shipped manifests run it: non-root, read-only root, no capabilities."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", command],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                **spec.pop("container", {}),
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            **spec,
        },
    }


def _running(kubectl: Kubectl, manifest: dict[str, Any]) -> dict[str, Any]:
    kubectl.apply(manifest)
    name = manifest["metadata"]["name"]
    kubectl.run("wait", "-n", NS, "--for=condition=Ready", f"pod/{name}", "--timeout=90s", timeout=100)
    return kubectl.get_json("pod", "-n", NS, name)


def _restarts(kubectl: Kubectl, name: str) -> int:
    pod = kubectl.get_json("pod", "-n", NS, name)
    return sum(s["restartCount"] for s in pod["status"].get("containerStatuses", []))


SERVER = "matchenv --version; touch /tmp/healthy; exec python3 -m http.server 8080 --bind 0.0.0.0 --directory /etc"


def _server(name: str) -> dict[str, Any]:
    """A pod serving ``/etc`` on 8080, Ready once it answers."""
    return _pod(name, SERVER, container={"readinessProbe": {"httpGet": {"path": "/os-release", "port": 8080},
                                                            "periodSeconds": 1}})


def test_the_project_image_runs_non_root_on_a_read_only_root(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, _ = node
    pod = _running(kubectl, _server("app"))
    assert pod["spec"]["nodeName"] == "matchenv-node"
    assert pod["status"]["podIP"].startswith("10.244.0.")
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    wait_for(lambda: "0.1.0" in kubectl.run("logs", "-n", NS, "app").stdout, timeout=30, what="the version in logs")
    identity = kubectl.run("exec", "-n", NS, "app", "--", "id", "-u").stdout.strip()
    assert identity == "10001"
    # the product only: no dev kit in the image (cryptography is there for supabase-auth's pyjwt[crypto] only)
    found = kubectl.run("exec", "-n", NS, "app", "--", "python3", "-c", "import importlib.util as u; print([m for m in "
                        "('matchenv_devkit', 'matchenv.devcluster', 'matchenv.devservices') if u.find_spec(m)])")
    assert found.stdout.strip() == "[]"
    denied = kubectl.run("exec", "-n", NS, "app", "--", "touch", "/opt/venv/x", check=False)
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr


def test_the_image_holds_exactly_the_locked_dependency_versions(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, _ = node
    _running(kubectl, _server("app"))
    listed = kubectl.run("exec", "-n", NS, "app", "--", "python3", "-c",
                         "import importlib.metadata as m; print('\\n'.join(sorted(f'{d.name}=={d.version}' "
                         "for d in m.distributions() if d.name != 'matchenv')))").stdout
    installed = {_canonical(line) for line in listed.splitlines() if line}
    locked = {_canonical(line) for line in (ROOT / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    assert installed == locked


def _canonical(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return f"{name.lower().replace('_', '-').replace('.', '-')}=={version}"


def test_port_forward_reaches_the_container(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, _ = node
    _running(kubectl, _server("app"))  # Ready once it answers: kubectl stops forwarding after a refused connection
    port = free_port()
    forward = subprocess.Popen(kubectl.cluster.kubectl_cmd("port-forward", "-n", NS, "pod/app", f"{port}:8080"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def fetch() -> str:
            return requests.get(f"http://127.0.0.1:{port}/os-release", timeout=5).text
        assert "Debian" in wait_for(fetch, timeout=30, what="a response through port-forward")
    finally:
        forward.terminate()
        _, err = forward.communicate(timeout=10)
        print(f"kubectl port-forward said: {err.decode(errors='replace')[-2000:]}")


def test_a_container_killed_by_its_pid_is_restarted(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, real = node
    pod = _running(kubectl, _server("app"))
    before = _restarts(kubectl, "app")
    pid = real.container_pid(pod["status"]["containerStatuses"][0]["containerID"])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _restarts(kubectl, "app") == before + 1, timeout=60, what="the kubelet restarting it")
    kubectl.run("wait", "-n", NS, "--for=condition=Ready", "pod/app", "--timeout=60s", timeout=70)
    last = kubectl.get_json("pod", "-n", NS, "app")["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137  # SIGKILL


def _exec(kubectl: Kubectl, pod: str, *command: str) -> None:
    """``kubectl exec``, once more when runc itself failed to start the process (under load its init pipe broke
    once: "OCI runtime exec failed ... write init-p: broken pipe", caught by CI); any other failure is the test's."""
    for attempt in range(3):
        done = kubectl.run("exec", "-n", NS, pod, "--", *command, check=False)
        if done.returncode == 0:
            return
        if "OCI runtime exec failed" not in done.stderr or attempt == 2:
            raise AssertionError(f"kubectl exec {pod} -- {' '.join(command)}: {done.stderr}")
        time.sleep(1)


def test_a_failing_liveness_probe_restarts_the_container(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, _ = node
    probe = {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}
    _running(kubectl, _pod("live", SERVER, container={"livenessProbe": probe}))
    time.sleep(3)
    assert _restarts(kubectl, "live") == 0  # a passing probe restarts nothing
    _exec(kubectl, "live", "rm", "/tmp/healthy")
    wait_for(lambda: _restarts(kubectl, "live") >= 1, timeout=60, what="a restart after the probe failed")
    events = kubectl.run("get", "events", "-n", NS, "--field-selector", "involvedObject.name=live").stdout
    assert "Liveness probe failed" in events
    # the restarted container recreated its marker: it stays up
    kubectl.run("wait", "-n", NS, "--for=condition=Ready", "pod/live", "--timeout=60s", timeout=70)


CLIENT = """
import json
from kubernetes import client, config
config.load_incluster_config()
conf = client.Configuration.get_default_copy()
conf.host = "https://kubernetes.default.svc.cluster.local"  # by its DNS name, through the Service
api = client.CoreV1Api(client.ApiClient(conf))
out = {"configmaps": len(api.list_namespaced_config_map(NAMESPACE).items)}
try:
    api.list_namespaced_secret(NAMESPACE)
    out["secrets"] = "allowed"
except client.ApiException as exc:
    out["secrets"] = exc.status
print(json.dumps(out))
"""


def test_a_pod_reaches_the_api_server_with_its_token_within_its_rbac(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, _ = node
    kubectl.run("create", "serviceaccount", "reader", "-n", NS)
    kubectl.run("create", "role", "reader", "-n", NS, "--verb=get,list", "--resource=configmaps")
    kubectl.run("create", "rolebinding", "reader", "-n", NS, "--role=reader", f"--serviceaccount={NS}:reader")
    _running(kubectl, _pod("client", "exec sleep infinity", serviceAccountName="reader"))
    address = kubectl.run("exec", "-n", NS, "client", "--", "python3", "-c",
                          "import socket; print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))")
    assert address.stdout.strip() == "10.0.0.1"
    script = f"NAMESPACE = {NS!r}\n{CLIENT}"
    result = json.loads(kubectl.run("exec", "-n", NS, "client", "--", "python3", "-c", script).stdout)
    assert result["configmaps"] >= 1  # kube-root-ca.crt at least
    assert result["secrets"] == 403


def test_service_names_resolve_to_their_cluster_ip(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, _ = node
    _running(kubectl, _server("app"))
    kubectl.run("expose", "pod", "app", "-n", NS, "--port=80", "--target-port=8080", "--name=web")
    cluster_ip = kubectl.get_json("service", "-n", NS, "web")["spec"]["clusterIP"]
    _running(kubectl, _pod("caller", "exec sleep infinity"))
    name = f"web.{NS}.svc.cluster.local"
    fetch = (f"import socket, urllib.request as u; print(socket.gethostbyname({name!r}));"
             f"print(u.urlopen('http://{name}/os-release', timeout=5).status)")
    out = wait_for(lambda: kubectl.run("exec", "-n", NS, "caller", "--", "python3", "-c", fetch).stdout.split(),
                   timeout=30, what="the Service answering by name")
    assert out == [cluster_ip, "200"]
    assert socket.inet_aton(cluster_ip)


AMQP = """
import sys, pika
url = sys.argv[1]
try:
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().queue_declare("kept", durable=True, passive=sys.argv[2] == "passive")
    print("ok")
except pika.exceptions.ProbableAuthenticationError:
    print("refused")
"""


def test_the_manifests_broker_runs_with_its_volume_and_its_secret(node: tuple[Kubectl, RealNode]) -> None:
    """manifests/components/rabbitmq/rabbitmq.yaml as shipped (only the image is the one built here): its PVC binds
    to a node volume, its admin user is the Secret's, and its data outlives the pod."""
    kubectl, _ = node
    docs = list(yaml.safe_load_all((ROOT / "manifests/components/rabbitmq/rabbitmq.yaml").read_text()))
    container = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    container.update(image=RABBITMQ_IMAGE, imagePullPolicy="Never")
    kubectl.apply(ROOT.joinpath("manifests/base/namespace.yaml").read_text())
    password = secrets.token_urlsafe(16)
    kubectl.run("create", "secret", "generic", "matchenv-broker", "-n", "matchenv-system",
                "--from-literal=username=admin", f"--from-literal=password={password}")
    kubectl.apply(yaml.safe_dump_all(docs))
    kubectl.run("rollout", "status", "statefulset/rabbitmq", "-n", "matchenv-system", "--timeout=180s",
                timeout=200)
    claim = kubectl.get_json("pvc", "-n", "matchenv-system", "data-rabbitmq-0")
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "local-static"
    _running(kubectl, _server("app"))
    host = "rabbitmq.matchenv-system.svc.cluster.local:5672"

    def amqp(user: str, secret: str, mode: str) -> str:
        return kubectl.run("exec", "-n", NS, "app", "--", "python3", "-c", AMQP, f"amqp://{user}:{secret}@{host}/",
                           mode).stdout.strip()

    assert amqp("admin", password, "declare") == "ok"
    assert amqp("admin", "wrong", "declare") == "refused"
    assert amqp("guest", "guest", "declare") == "refused"  # only the Secret's user exists
    kubectl.run("delete", "pod", "rabbitmq-0", "-n", "matchenv-system", "--timeout=60s", timeout=90)
    kubectl.run("rollout", "status", "statefulset/rabbitmq", "-n", "matchenv-system", "--timeout=180s",
                timeout=200)
    assert wait_for(lambda: amqp("admin", password, "passive") == "ok", timeout=60, what="the queue kept")


QUEUE_SETUP = """
import sys, pika
with pika.BlockingConnection([pika.URLParameters(u) for u in sys.argv[1].split(";")]) as conn:
    channel = conn.channel()
    channel.exchange_declare("matches-fanout", "fanout", durable=True)
    channel.queue_declare("matches.cluster", durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind("matches.cluster", "matches-fanout")
print("ok")
"""

QUEUE_DRAIN = """
import json, re, sys, pika
ids, total = set(), 0
with pika.BlockingConnection([pika.URLParameters(u) for u in sys.argv[1].split(";")]) as conn:
    channel = conn.channel()
    channel.basic_qos(prefetch_count=500)
    for method, _, body in channel.consume("matches.cluster", inactivity_timeout=5):
        if method is None:
            break
        total += 1
        ids.update(re.findall(rb'"external_match_id": ?"([^"]+)"', body))
        channel.basic_ack(method.delivery_tag)
print(json.dumps({"messages": total, "distinct": len(ids)}))
"""

@dataclass(frozen=True)
class BrokerCluster:
    """The three-node broker as one install method names it: StatefulSet ``name``, its headless Service."""

    name: str

    @property
    def pods(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(3)]

    @property
    def nodes(self) -> list[str]:
        return [f"rabbit@{pod}.{self.name}-nodes.matchenv-system" for pod in self.pods]

    def rabbitmqctl(self, kubectl: Kubectl, pod: str, *args: str) -> Any:
        """``rabbitmqctl ARGS --formatter json`` in a broker pod; None while it cannot answer."""
        done = kubectl.run("exec", "-n", "matchenv-system", pod, "-c", "rabbitmq", "--", "rabbitmqctl", "-q", *args,
                           "--formatter", "json", check=False, timeout=60)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def running_nodes(self, kubectl: Kubectl, pod: str) -> list[str]:
        status = self.rabbitmqctl(kubectl, pod, "cluster_status")
        return sorted(status["running_nodes"]) if status else []

    def queue_members(self, kubectl: Kubectl) -> tuple[list[str], list[str]]:
        """The quorum queue's members and those online, as node 1 sees them."""
        queues = self.rabbitmqctl(kubectl, self.pods[1], "list_queues", "name", "members", "online") or []
        queue = next((q for q in queues if q["name"] == "matches.cluster"), {"members": [], "online": []})
        return sorted(queue["members"]), sorted(queue["online"])


def _broker_cluster(kubectl: Kubectl, tmp: Path, source: str) -> tuple[str, BrokerCluster]:
    """The three-node broker as shipped: components/rabbitmq with components/rabbitmq-cluster (from a copy of
    manifests/ whose user-filled files have generated secrets), or the chart's broker with rabbitmq.replicas=3.
    Only the image is the one built here."""
    if source == "kustomize":
        manifests = tmp / "manifests"
        shutil.copytree(ROOT / "manifests", manifests, ignore=shutil.ignore_patterns("*.env"))
        fill_env_files(manifests)
        overlay = manifests / "broker-cluster"
        overlay.mkdir()
        shutil.copy(manifests / "base/namespace.yaml", overlay)
        overlay.joinpath("kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": ["namespace.yaml"],
            "components": ["../components/rabbitmq", "../components/rabbitmq-cluster"]}))
        docs = [d for d in yaml.safe_load_all(kubectl.run("kustomize", str(overlay)).stdout) if d]
        broker = BrokerCluster("rabbitmq")
    else:
        rendered = subprocess.run(
            [str(HelmBinaries.default().path("helm")), "template", "rel", str(ROOT / "charts/matchenv"),
             "--namespace", "matchenv-system", "--set", "rabbitmq.enabled=true", "--set", "rabbitmq.replicas=3"],
            capture_output=True, text=True, timeout=120, check=True).stdout
        # the broker's part of the release: what carries its component label, and the broker Secret it makes
        docs = [d for d in yaml.safe_load_all(rendered) if d and (
            d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "broker"
            or d["metadata"]["name"] == "matchenv-broker")]
        broker = BrokerCluster("rel-rabbitmq")
    pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    for container in pod["containers"] + pod["initContainers"]:
        container.update(image=RABBITMQ_IMAGE, imagePullPolicy="Never")
    return yaml.safe_dump_all(docs), broker


@pytest.mark.parametrize("source", ["kustomize", "helm"])
def test_the_three_node_broker_forms_one_cluster_and_a_pod_deleted_mid_scrape_loses_nothing(
        node: tuple[Kubectl, RealNode], tmp_path: Path, source: str) -> None:
    """components/rabbitmq-cluster and the chart's rabbitmq.replicas=3: three pods find each other through the API
    server and form one cluster; a quorum queue has a member on each; the pod the publisher is connected to is
    deleted mid-scrape, and every match the publisher was told is confirmed is in the queue once the pod is back."""
    kubectl, _ = node
    system = ("-n", "matchenv-system")
    # the broker of the test before, if any: each has its own node names, volumes and Secrets
    kubectl.run("delete", "statefulset", "-l", "app.kubernetes.io/name in (rabbitmq, matchenv)", *system,
                "--wait=true", timeout=120)
    kubectl.run("delete", "pvc", "--all", *system, "--wait=false")
    kubectl.run("delete", "secret", "matchenv-broker", *system, "--ignore-not-found")
    kubectl.apply(ROOT.joinpath("manifests/base/namespace.yaml").read_text())
    wait_for(lambda: not [p for p in kubectl.get_json("pods", *system)["items"] if "rabbitmq" in p["metadata"]["name"]],
             timeout=120, what="the broker of the test before gone")
    manifests, broker = _broker_cluster(kubectl, tmp_path, source)
    kubectl.apply(manifests)
    kubectl.run("rollout", "status", f"statefulset/{broker.name}", *system, "--timeout=300s", timeout=320)
    for pod in broker.pods:
        assert wait_for(lambda p=pod: broker.running_nodes(kubectl, p) == broker.nodes, timeout=120,
                        what=f"{pod} seeing all three nodes")
    secret = kubectl.get_json("secret", "matchenv-broker", *system)["data"]
    user, password = (base64.b64decode(secret[k]).decode() for k in ("username", "password"))
    nodes = base64.b64decode(secret["url"]).decode().split(";")
    assert len(nodes) == 3  # the broker Secret lists every node
    url = ";".join(n.replace("amqp://", f"amqp://{user}:{password}@") + "/%2F" for n in nodes)
    _running(kubectl, _server("app"))
    assert kubectl.run("exec", "-n", NS, "app", "--", "python3", "-c", QUEUE_SETUP, url).stdout.strip() == "ok"
    assert broker.queue_members(kubectl) == (broker.nodes, broker.nodes)  # a member on every node

    matches = 6_000
    scrape = subprocess.Popen(
        kubectl.cluster.kubectl_cmd("exec", "-n", NS, "app", "--", "matchenv", "scrape", "--synthetic", str(matches),
                                    "--max-rate", "300", "--quiet", "--broker-url", url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # about a third of the run
    deleted = time.monotonic()
    first = broker.pods[0]  # the first URL: the publisher's node
    kubectl.run("delete", "pod", first, *system, "--wait=false")
    out, err = scrape.communicate(timeout=300)
    print(err, out)
    assert scrape.returncode == 0, err
    assert f"confirmed {matches}, " in out
    assert "failed 0," in out
    assert "reconnects 0" not in out  # it did lose its node
    assert wait_for(lambda: broker.running_nodes(kubectl, first) == broker.nodes, timeout=240,
                    what="the deleted pod back in the cluster")
    assert wait_for(lambda: broker.queue_members(kubectl) == (broker.nodes, broker.nodes), timeout=60,
                    what="the queue's member on the deleted pod's node online again")
    print(f"{first} back in the cluster and the queue {time.monotonic() - deleted:.0f} s after its deletion")
    drained = json.loads(kubectl.run("exec", "-n", NS, "app", "--", "python3", "-c", QUEUE_DRAIN, url,
                                     timeout=300).stdout)
    print(f"queue after the scrape: {drained}")
    assert drained["distinct"] == matches  # every confirmed match, whichever node held the queue's leader
    # at most what was in flight (the publisher's window), sent again on the next node
    assert drained["messages"] - matches <= DEFAULT_WINDOW


def test_the_database_image_takes_its_password_from_a_secret(node: tuple[Kubectl, RealNode]) -> None:
    kubectl, _ = node
    password = secrets.token_urlsafe(16)
    kubectl.run("create", "secret", "generic", "db", "-n", NS, f"--from-literal=POSTGRES_PASSWORD={password}")
    database = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": NS, "labels": {"app": "db"}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "postgres", "image": POSTGRES_IMAGE, "imagePullPolicy": "Never",
                "envFrom": [{"secretRef": {"name": "db"}}],
                "ports": [{"containerPort": 5432}],
                "readinessProbe": {"tcpSocket": {"port": 5432}, "periodSeconds": 1},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    _running(kubectl, database)
    kubectl.run("expose", "pod", "db", "-n", NS, "--port=5432", "--name=postgres")
    _running(kubectl, _server("app"))
    query = ("import sys, psycopg\ntry:\n    print(psycopg.connect(sys.argv[1], connect_timeout=5)"
             ".execute('select 1').fetchone()[0])\nexcept psycopg.OperationalError as exc:\n"
             "    print('refused' if 'password authentication failed' in str(exc) else exc)")
    host = f"postgres.{NS}.svc.cluster.local"

    def connect(secret: str) -> str:
        return kubectl.run("exec", "-n", NS, "app", "--", "python3", "-c", query,
                           f"postgresql://postgres:{secret}@{host}/postgres").stdout.strip()

    assert wait_for(lambda: connect(password) == "1", timeout=30, what="a login with the Secret's password")
    assert connect("wrong") == "refused"


def test_another_state_directorys_node_neither_starts_beside_it_nor_stops_it(
        node: tuple[Kubectl, RealNode], tmp_path: Path) -> None:
    kubectl, real = node
    pod = _running(kubectl, _server("app"))
    other = RealNode(LocalCluster(tmp_path / "other", node_ip=NODE_IP), images=[])
    with pytest.raises(NodeError, match="another node"):
        other.start()
    other.stop()  # it never started: nothing on the machine is its to remove
    assert real.running()
    after = kubectl.get_json("pod", "-n", NS, "app")
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == pod["status"]["containerStatuses"][0][
        "restartCount"]
    kubectl.run("exec", "-n", NS, "app", "--", "true")  # its container is still there
    assert _node_ready(kubectl)


def _node_ready(kubectl: Kubectl) -> bool:
    conditions = kubectl.get_json("node", "matchenv-node")["status"]["conditions"]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

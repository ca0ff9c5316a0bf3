"""A MatchEnvironment only ever touches what it owns, tried as a second (careless or hostile) team would: real API
server, real RabbitMQ, the operator as a process with exactly its RBAC."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import requests

from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.cases import environment
from tests.e2e.conftest import Kubectl
from tests.e2e.harness import OperatorProcess, secret_value, wait_for
from tests.e2e.platform import Platform, broker_secret, db_secret, platform_fixture

RESYNC = 2.0
ROOT = Path(__file__).resolve().parents[2]
WRITE = re.compile(r'"(PATCH|POST|PUT|DELETE) (/\S*)')


@pytest.fixture(scope="module")
def platform(crd_installed: Kubectl, rabbitmq: RabbitMQNode, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    crd_installed.run("create", "namespace", "other", check=False)
    yield from platform_fixture(crd_installed, rabbitmq, tmp_path_factory.mktemp("tenancy"), RESYNC)


def apply(platform: Platform, name: str, namespace: str = "default", **spec: Any) -> None:
    body = environment(name, **spec)
    body["metadata"]["namespace"] = namespace
    secret = db_secret(name)
    secret["metadata"]["namespace"] = namespace
    platform.kubectl.apply(secret)
    platform.kubectl.apply(body)


def status(platform: Platform, name: str, namespace: str = "default") -> dict[str, Any]:
    found: dict[str, Any] = platform.kubectl.get_json("menv", name, "-n", namespace).get("status") or {}
    return found


def condition(platform: Platform, name: str, type_: str, namespace: str = "default") -> dict[str, Any]:
    return next((c for c in status(platform, name, namespace).get("conditions", []) if c["type"] == type_), {})


def ready(platform: Platform, name: str, namespace: str = "default") -> bool:
    return condition(platform, name, "Ready", namespace).get("status") == "True"


def delete(platform: Platform, name: str, namespace: str = "default") -> None:
    platform.kubectl.run("delete", "menv", name, "-n", namespace, "--timeout=90s", timeout=120)


def publish_to_fanout(platform: Platform, count: int = 1) -> None:
    for _ in range(count):
        platform.publish(b'{"probe": true}')


def test_the_second_teams_prod_is_refused_and_its_deletion_touches_nothing(platform: Platform) -> None:
    mgmt = platform.mgmt
    apply(platform, "prod", queue={"type": "quorum", "maxLength": 1000})
    wait_for(lambda: ready(platform, "prod"), timeout=60, what="default/prod Ready")
    apply(platform, "prod", "other", queue={"type": "quorum", "maxLength": 1}, deletionPolicy="Delete")
    wait_for(lambda: condition(platform, "prod", "TopologyReady", "other").get("reason") == "QueueClaimed",
             timeout=30, what="other/prod refused")
    assert "default/prod" in condition(platform, "prod", "TopologyReady", "other")["message"]
    assert status(platform, "prod", "other")["phase"] == "Degraded"
    assert ready(platform, "prod")
    # exactly one is Ready, and the other's user may not read prod's queue
    assert mgmt.get("/api/permissions/%2F/matchenv.other.prod") is None
    publish_to_fanout(platform, 3)
    wait_for(lambda: platform.messages("matches.prod") == 3, what="3 messages for prod")
    policy = mgmt.policy("matchenv.matches.prod")
    assert policy is not None
    assert policy["definition"]["max-length"] == 1000
    delete(platform, "prod", "other")
    assert platform.messages("matches.prod") == 3
    assert mgmt.queue("matches.prod.dlq") is not None
    assert mgmt.policy("matchenv.matches.prod") == policy
    assert len(mgmt.bindings("matches-fanout", "matches.prod")) == 1
    publish_to_fanout(platform)
    wait_for(lambda: platform.messages("matches.prod") == 4, what="prod keeps receiving")
    assert ready(platform, "prod")
    platform.purge("matches.prod")


def test_an_application_queue_and_a_foreign_exchange_are_out_of_bounds(platform: Platform) -> None:
    mgmt = platform.mgmt
    requests.put(f"{mgmt.base}/api/queues/%2F/orders", auth=mgmt.auth, json={"durable": True},
                 timeout=5).raise_for_status()
    platform.mgmt.delete("/api/queues/%2F/orders/contents")
    with pika.BlockingConnection(pika.URLParameters(platform.rabbitmq.endpoints.amqp_url)) as conn:
        conn.channel().basic_publish("", "orders", b"an order", pika.BasicProperties(delivery_mode=2))
    apply(platform, "grabber", queue={"name": "orders", "maxLength": 1, "adopt": True}, deletionPolicy="Delete")
    apply(platform, "tapper", exchange={"name": "orders-events", "type": "topic"}, queue={"routingKeys": ["#"]})
    wait_for(lambda: condition(platform, "grabber", "TopologyReady").get("reason") == "NotAllowed", timeout=30,
             what="queue refused")
    assert "MATCHENV_QUEUE_PATTERN" in status(platform, "grabber")["lastError"]
    wait_for(lambda: condition(platform, "tapper", "TopologyReady").get("reason") == "NotAllowed", timeout=30,
             what="exchange refused")
    assert "MATCHENV_ALLOWED_EXCHANGES" in status(platform, "tapper")["lastError"]
    delete(platform, "grabber")
    delete(platform, "tapper")
    # the management API reports a new queue's counts after its first stats interval
    orders = wait_for(lambda: (q := mgmt.queue("orders")) is not None and "messages" in q and q, timeout=15,
                      what="the orders queue and its counts")
    assert orders["messages"] == 1
    assert orders.get("policy") in (None, "")
    assert mgmt.get("/api/exchanges/%2F/orders-events") is None
    mgmt.delete("/api/queues/%2F/orders")


def test_a_wrong_broker_password_degrades_one_environment_only(platform: Platform) -> None:
    mgmt = platform.mgmt
    apply(platform, "steady")
    wait_for(lambda: ready(platform, "steady"), timeout=60, what="steady Ready")
    bad = broker_secret(platform.rabbitmq)
    bad["metadata"] = {"name": "team-admin", "namespace": "default"}
    bad["stringData"]["password"] = "wrong"
    platform.kubectl.apply(bad)
    apply(platform, "lockedout", broker={"connectionSecretRef": {"name": "team-admin"}})
    wait_for(lambda: condition(platform, "lockedout", "TopologyReady").get("reason") == "BrokerAuthFailed",
             timeout=30, what="BrokerAuthFailed")
    assert status(platform, "lockedout")["phase"] == "Degraded"
    assert "wrong" not in status(platform, "lockedout")["lastError"]
    for _ in range(2):  # other environments keep being repaired, pass after pass
        binding = mgmt.bindings("matches-fanout", "matches.steady")[0]
        mgmt.delete(f"/api/bindings/%2F/e/matches-fanout/q/matches.steady/{binding['properties_key']}")
        wait_for(lambda: len(mgmt.bindings("matches-fanout", "matches.steady")) == 1, timeout=2 * RESYNC + 5,
                 what="binding repaired within one interval")
    assert ready(platform, "steady")
    platform.kubectl.run("delete", "menv", "lockedout", "--wait=false")
    platform.kubectl.run("patch", "secret", "team-admin", "--type=merge", "-p",
                         json.dumps({"stringData": {"password": platform.rabbitmq.endpoints.password}}))
    wait_for(lambda: platform.kubectl.run("get", "menv", "lockedout", check=False).returncode != 0, timeout=60,
             what="deletion completes with the right password")
    delete(platform, "steady")


def test_a_hand_made_broker_secret_is_not_overwritten(platform: Platform) -> None:
    platform.kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "handmade-broker", "namespace": "default"},
                            "stringData": {"url": "amqp://someone:else@elsewhere/"}})
    apply(platform, "handmade")
    wait_for(lambda: condition(platform, "handmade", "TopologyReady").get("reason") == "SecretNotOwned", timeout=30,
             what="SecretNotOwned")
    assert "not owned by this MatchEnvironment" in status(platform, "handmade")["lastError"]
    assert secret_value(platform.kubectl, "default", "handmade-broker", "url") == "amqp://someone:else@elsewhere/"
    assert platform.mgmt.user(platform.user("handmade")) is None
    delete(platform, "handmade")
    assert secret_value(platform.kubectl, "default", "handmade-broker", "url") == "amqp://someone:else@elsewhere/"
    platform.kubectl.run("delete", "secret", "handmade-broker")


def test_a_deployment_the_api_server_refuses_is_degraded_with_its_message(platform: Platform) -> None:
    apply(platform, "greedy", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-greedy"},
                                       "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}})
    wait_for(lambda: condition(platform, "greedy", "WorkersReady").get("reason") == "DeploymentRefused", timeout=30,
             what="DeploymentRefused")
    assert status(platform, "greedy")["phase"] == "Degraded"
    assert "must be less than or equal to cpu limit" in status(platform, "greedy")["lastError"]
    delete(platform, "greedy")


def test_an_env_entry_with_value_and_value_from_is_refused_at_apply(platform: Platform) -> None:
    body = environment("both", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "db"},
                                        "env": [{"name": "X", "value": "1",
                                                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]})
    result = platform.kubectl.apply(body, check=False)
    assert result.returncode != 0
    assert "spec.workers.env[0]" in result.stderr
    assert "value or valueFrom, not both" in result.stderr


def test_100_environments_at_once_set_each_password_once_and_roll_nothing(platform: Platform) -> None:
    names = [f"burst{i:03d}" for i in range(100)]
    manifests = []
    for name in names:
        body = environment(name, workers={"image": "matchenv:0.1.0", "replicas": 0,
                                          "databaseSecretRef": {"name": "matchenv-db-burst"}})
        manifests.append(body)
    platform.kubectl.apply(db_secret("burst"))
    path = platform.tmp / "burst.yaml"
    path.write_text("\n---\n".join(json.dumps(m) for m in manifests))
    platform.kubectl.run("apply", "-f", str(path), timeout=120)
    platform.kubectl.run("wait", "--for=condition=Ready", "menv", *names, "--timeout=240s", timeout=300)
    time.sleep(3 * RESYNC)  # a few more passes, which must change nothing
    events = platform.kubectl.get_json("events", "--field-selector", "reason=BrokerChanged")["items"]
    password_sets: dict[str, int] = {}
    for event in events:
        match = re.search(r"(created broker user|set the password of broker user) "
                          rf"({re.escape(platform.user('burst'))}\d+)", event["message"])
        if match:
            password_sets[match.group(2)] = password_sets.get(match.group(2), 0) + event.get("count", 1)
    assert len(password_sets) == 100
    assert set(password_sets.values()) == {1}, {u: n for u, n in password_sets.items() if n != 1}
    deployments = platform.kubectl.get_json("deployments", "-l", "app.kubernetes.io/managed-by=matchenv")["items"]
    burst = [d for d in deployments if d["metadata"]["name"].startswith("burst")]
    assert len(burst) == 100
    assert {d["metadata"]["generation"] for d in burst} == {1}  # no rollout after the first revision
    platform.kubectl.run("delete", "-f", str(path), "--timeout=240s", timeout=300)


def test_a_stalled_leader_never_writes_beside_its_successor(platform: Platform) -> None:
    leader = platform.operator
    wait_for(lambda: "leading as" in leader.log(), timeout=30, what="the first operator leads")  # run alone too
    standby = OperatorProcess(platform.sa_kubeconfig, platform.tmp / "standby.log", resync_seconds=RESYNC,
                              identity="operator-standby", health_port=True).start()
    try:
        wait_for(lambda: "standing by" in standby.log(), timeout=30, what="standby announces itself")
        assert requests.get(standby.health_url, timeout=2).status_code == 200  # alive while it waits
        apply(platform, "watched")
        wait_for(lambda: ready(platform, "watched"), timeout=60, what="watched Ready")
        assert leader.proc is not None
        os.kill(leader.proc.pid, signal.SIGSTOP)
        stopped_at = dt.datetime.now(dt.UTC)
        try:
            wait_for(lambda: "took over lease" in standby.log(), timeout=40, what="standby takes over")
            # work for both: drift that only a writer repairs
            mgmt = platform.mgmt
            binding = mgmt.bindings("matches-fanout", "matches.watched")[0]
            mgmt.delete(f"/api/bindings/%2F/e/matches-fanout/q/matches.watched/{binding['properties_key']}")
            wait_for(lambda: len(mgmt.bindings("matches-fanout", "matches.watched")) == 1, timeout=15,
                     what="the new leader repairs")
            time.sleep(max(0.0, 30 - (dt.datetime.now(dt.UTC) - stopped_at).total_seconds()))
        finally:
            os.kill(leader.proc.pid, signal.SIGCONT)
        assert leader.proc.wait(timeout=30) == 1  # it noticed and stepped down
        taken = _log_time(standby.log(), "took over lease")
        lines = leader.log().splitlines()
        # the fence's last check logs each write right before its first byte leaves: none after the takeover
        assert any(" sending PATCH /apis/matchenv.io/" in line for line in lines)  # it is there: watched's status
        sent_late = [line for line in lines if " sending " in line and _line_time(line) >= taken]
        assert sent_late == [], "the old leader sent writes after its successor took over"
        # every write the HTTP client saw answered after the takeover (Kubernetes and management API alike; the
        # Lease calls are the election's) was sent before it: on the wire while the process stood still
        for at, line in enumerate(lines):
            write = WRITE.search(line)
            if write and "/leases/" not in line and _line_time(line) >= taken:
                method, path = write.group(1), write.group(2).split("?", 1)[0]
                sends = [s for s in lines[:at] if f" sending {method} {path}" in s]
                assert sends, f"a write the fence never saw: {line}"
                assert _line_time(sends[-1]) < taken, f"sent after the takeover: {line}"
        assert "not leading" in leader.log() or "lost lease" in leader.log()
    finally:
        platform.operator = standby
    delete(platform, "watched")


def _line_time(line: str) -> dt.datetime:
    found = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", line)
    assert found, line
    return dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")


def _log_time(log: str, text: str) -> dt.datetime:
    return _line_time(next(line for line in log.splitlines() if text in line))


def test_the_worker_secret_is_readable_only_by_its_own_user(platform: Platform) -> None:
    apply(platform, "mine")
    wait_for(lambda: ready(platform, "mine"), timeout=60, what="mine Ready")
    url = secret_value(platform.kubectl, "default", "mine-broker", "url")
    password = base64.b64decode(platform.kubectl.get_json("secret", "mine-broker")["data"]["password"]).decode()
    assert password in url
    delete(platform, "mine")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(url))


class _SlowManagementApi:
    """A tenant's "management API" on loopback that answers every call after ``delay`` seconds (503)."""

    def __init__(self, delay: float) -> None:
        import http.server
        import threading

        self.calls = 0
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # every call of a converge begins with reads
                api.calls += 1
                time.sleep(delay)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _restart_operator(platform: Platform, name: str, extra_env: dict[str, str]) -> None:
    platform.operator.stop()
    platform.operator = OperatorProcess(platform.sa_kubeconfig, platform.tmp / f"{name}.log", resync_seconds=RESYNC,
                                        identity=name, extra_env=extra_env).start()


def test_a_tenant_broker_answering_after_9s_delays_no_other_environment(platform: Platform) -> None:
    """A tenant's broker Secret names a management API that answers after 9 s: the other environments are still
    checked every interval (a binding deleted by hand is back within one, by the resync alone: broker events off),
    and the administrator can turn connectionSecretRef off."""
    slow = _SlowManagementApi(9.0)
    try:
        _restart_operator(platform, "operator-no-events", {"MATCHENV_BROKER_EVENTS": "false"})
        apply(platform, "calm")
        wait_for(lambda: ready(platform, "calm"), timeout=60, what="calm Ready")
        secret = broker_secret(platform.rabbitmq)
        secret["metadata"].update(name="slow-broker", namespace="default")
        secret["stringData"]["management-url"] = slow.url
        platform.kubectl.apply(secret)
        apply(platform, "slowpoke", broker={"connectionSecretRef": {"name": "slow-broker"}})
        wait_for(lambda: slow.calls > 0, timeout=30, what="the tenant's broker called")
        time.sleep(2 * RESYNC)  # passes run with the tenant's first call under way
        mgmt = platform.mgmt
        binding = mgmt.bindings("matches-fanout", "matches.calm")[0]
        mgmt.delete(f"/api/bindings/%2F/e/matches-fanout/q/matches.calm/{binding['properties_key']}")
        deleted = time.monotonic()
        wait_for(lambda: len(mgmt.bindings("matches-fanout", "matches.calm")) == 1, timeout=30,
                 what="calm's binding back")
        took = time.monotonic() - deleted
        print(f"\ncalm's binding back {took:.1f}s after its deletion (interval {RESYNC:.0f}s, tenant answers in 9s)")
        assert took < 2 * RESYNC + 2  # the next pass, not after the tenant's 9 s calls
        wait_for(lambda: condition(platform, "slowpoke", "TopologyReady").get("reason") == "BrokerUnreachable",
                 timeout=60, what="slowpoke says its broker does not answer")
        # the administrator turns tenants' brokers off: refused before any call, naming the setting
        _restart_operator(platform, "operator-no-tenant-brokers", {"MATCHENV_TENANT_BROKER_HOSTS": "none"})
        wait_for(lambda: condition(platform, "slowpoke", "TopologyReady").get("reason") == "NotAllowed",
                 timeout=60, what="slowpoke NotAllowed")
        assert "MATCHENV_TENANT_BROKER_HOSTS" in status(platform, "slowpoke")["lastError"]
        platform.kubectl.run("annotate", "menv", "slowpoke", "matchenv.io/abandon-broker=true")
        delete(platform, "slowpoke")
        delete(platform, "calm")
    finally:
        slow.close()
        _restart_operator(platform, "operator-again", {})


def test_a_namespace_deleted_with_its_broker_secret_goes_by_the_documented_path(platform: Platform) -> None:
    """The namespace's deletion may remove the environment's connection Secret before the environment: its
    teardown then waits, saying to annotate it with matchenv.io/abandon-broker=true (docs/operating.md); annotated,
    it goes, and the namespace with it, within a minute."""
    kubectl = platform.kubectl
    kubectl.run("create", "namespace", "doomed")
    secret = broker_secret(platform.rabbitmq)
    secret["metadata"].update(name="team-broker", namespace="doomed")
    kubectl.apply(secret)
    apply(platform, "prod", namespace="doomed", queue={"name": "matches.doomed"},
          broker={"connectionSecretRef": {"name": "team-broker"}})
    wait_for(lambda: ready(platform, "prod", "doomed"), timeout=60, what="doomed/prod Ready")
    kubectl.run("delete", "secret", "team-broker", "-n", "doomed")  # the order a namespace's deletion may take
    kubectl.run("delete", "namespace", "doomed", "--wait=false")
    wait_for(lambda: "abandon-broker" in (status(platform, "prod", "doomed").get("lastError") or ""), timeout=30,
             what="the teardown says how to let it go")
    kubectl.run("annotate", "menv", "prod", "-n", "doomed", "matchenv.io/abandon-broker=true")
    annotated = time.monotonic()
    wait_for(lambda: kubectl.run("get", "namespace", "doomed", check=False).returncode != 0, timeout=60,
             what="namespace doomed gone")
    print(f"\nnamespace gone {time.monotonic() - annotated:.1f}s after the annotation")
    # what the abandon left on the broker (its event lists it)
    for path in ("queues/%2F/matches.doomed", "queues/%2F/matches.doomed.dlq", "exchanges/%2F/matches.doomed.dlx",
                 f"users/{platform.user('prod', 'doomed')}"):
        platform.mgmt.delete(f"/api/{path}")


JARGON = re.compile(r"Traceback|Exception|HTTPConnectionPool|urllib3|object at 0x|Errno|\{'|ApiException|None\b")


def test_kubectl_describe_says_in_plain_words_what_is_wrong_for_each_failure(platform: Platform) -> None:
    """Each failure a user can cause, at once: `kubectl describe menv` names it with a documented reason and a
    message in words (what is wrong, where), never a stack trace or a client library's exception."""
    kubectl, rabbitmq = platform.kubectl, platform.rabbitmq
    documented = (ROOT / "docs/operating.md").read_text()

    def admin_secret(name: str, **changes: str | None) -> None:
        secret = broker_secret(rabbitmq)
        secret["metadata"] = {"name": name, "namespace": "default"}
        secret["stringData"] = {k: v for k, v in {**secret["stringData"], **changes}.items() if v is not None}
        kubectl.apply(secret)

    apply(platform, "audowner")
    wait_for(lambda: ready(platform, "audowner"), timeout=60, what="audowner Ready")
    admin_secret("aud-wrong-password", password="wrong")
    admin_secret("aud-closed-port", **{"management-url": "http://127.0.0.1:1"})
    admin_secret("aud-no-password", password=None)
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "audsecret-broker",
                                                                        "namespace": "default"},
                   "stringData": {"url": "amqp://someone:else@elsewhere/"}})
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "audevents-events",
                                                                        "namespace": "default"},
                   "stringData": {"url": "amqp://someone:else@elsewhere/"}})
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aud-db-nokeys", "namespace": "default"},
                   "stringData": {"HOST": "db"}})
    kubectl.run("create", "deployment", "auddeploy-workers", "--image=busybox", "-n", "default")
    workers = {"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-audevents"}}
    cases: dict[str, tuple[str, str, str]] = {  # name: (condition, reason, words the message must hold)
        "audclaim": ("TopologyReady", "QueueClaimed", "default/audowner"),
        "audbounds": ("TopologyReady", "NotAllowed", "MATCHENV_ALLOWED_EXCHANGES"),
        "audpassword": ("TopologyReady", "BrokerAuthFailed", "refuse"),
        "audclosed": ("TopologyReady", "BrokerUnreachable", "127.0.0.1:1"),
        "audnokey": ("TopologyReady", "BrokerSecretInvalid", "password"),
        "audsecret": ("TopologyReady", "SecretNotOwned", "audsecret-broker"),
        "audevents": ("TopologyReady", "SecretNotOwned", "audevents-events"),
        "auddb": ("WorkersReady", "DatabaseSecretInvalid", "DATABASE_URL"),
        "auddeploy": ("WorkersReady", "DeploymentNotOwned", "auddeploy-workers"),
    }
    apply(platform, "audclaim", "other", queue={"name": "matches.audowner"})
    apply(platform, "audbounds", exchange={"name": "orders-events"})
    apply(platform, "audpassword", broker={"connectionSecretRef": {"name": "aud-wrong-password"}})
    apply(platform, "audclosed", broker={"connectionSecretRef": {"name": "aud-closed-port"}})
    apply(platform, "audnokey", broker={"connectionSecretRef": {"name": "aud-no-password"}})
    apply(platform, "audsecret")
    apply(platform, "audevents", workers={**workers, "taskEvents": True})
    apply(platform, "auddb", workers={**workers, "databaseSecretRef": {"name": "aud-db-nokeys"}})
    apply(platform, "auddeploy")
    where = {"audclaim": "other"}
    try:
        for name, (type_, reason, words) in cases.items():
            namespace = where.get(name, "default")
            wait_for(lambda n=name, t=type_, r=reason, ns=namespace:  # type: ignore[misc]
                     condition(platform, n, t, ns).get("reason") == r, timeout=60, what=f"{name}: {reason}")
            message = condition(platform, name, type_, namespace)["message"]
            described = kubectl.run("describe", "menv", name, "-n", namespace).stdout
            assert reason in described, described
            assert message in described, described
            assert words in message, (name, message)
            assert not JARGON.search(message), (name, message)
            assert len(re.findall(r"(?<![\w/.-])[a-z]{2,}(?![\w/.-])", message)) >= 4, (name, message)  # words
            assert f"| {type_} | `{reason}`" in documented, f"{type_} {reason} is not in docs/operating.md's table"
    finally:
        for name in ("audpassword", "audclosed", "audnokey"):  # their broker never let them make anything
            kubectl.run("annotate", "menv", name, "matchenv.io/abandon-broker=true", check=False)
        for name in cases:
            kubectl.run("delete", "menv", name, "-n", where.get(name, "default"), "--timeout=90s", check=False,
                        timeout=120)
        kubectl.run("delete", "deployment", "auddeploy-workers", check=False)
        kubectl.run("delete", "secret", "aud-wrong-password", "aud-closed-port", "aud-no-password",
                    "audsecret-broker", "audevents-events", "aud-db-nokeys", check=False)
        delete(platform, "audowner")

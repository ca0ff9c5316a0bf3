"""The operator end to end: real API server, real RabbitMQ, the operator as a process with its own RBAC, and a node
agent that reports the worker pods Ready (the worker processes themselves are the worker tests' business)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import yaml

from matchenv.contracts import REASON_HEADER
from matchenv.naming import SECRETS_HASH_ANNOTATION
from matchenv.operator.handsoff import RECONCILE_ANNOTATION
from matchenv.topology.client import ManagementClient
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.cases import environment
from tests.e2e.conftest import Kubectl
from tests.e2e.harness import (
    OperatorProcess,
    secret_value,
    wait_for,
)
from tests.e2e.platform import Platform, broker_secret, db_secret, platform_fixture

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ROOT / "manifests/environments"
RESYNC = 2.0
ENVS = ("prod", "dev", "staging")


@pytest.fixture(scope="module")
def platform(crd_installed: Kubectl, rabbitmq: RabbitMQNode, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    yield from platform_fixture(crd_installed, rabbitmq, tmp_path_factory.mktemp("operator"), RESYNC,
                                (*ENVS, "preview", "pr-7"))


def test_three_environments_become_ready(platform: Platform) -> None:
    kubectl, mgmt = platform.kubectl, platform.mgmt
    for env in ENVS:
        kubectl.run("apply", "-f", str(ENVIRONMENTS / env / "matchenvironment.yaml"))
    kubectl.run("wait", "--for=condition=Ready", "menv", "--all", "--timeout=90s", timeout=120)
    for env in ENVS:
        queue = f"matches.{env}"
        assert mgmt.queue(queue) is not None
        assert mgmt.queue(f"{queue}.dlq") is not None
        assert len(mgmt.bindings("matches-fanout", queue)) == 1
        assert len(mgmt.bindings(f"{queue}.dlx", f"{queue}.dlq")) == 1
        assert mgmt.user(platform.user(env)) is not None
        deployment = kubectl.get_json("deployment", f"{env}-workers")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["matchenv", "worker"]
        assert container["args"][:2] == ["--queue", queue]
        env_vars = {e["name"]: e for e in container["env"]}
        assert env_vars["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {"name": f"{env}-broker", "key": "url"}
        assert container["envFrom"] == [{"secretRef": {"name": f"matchenv-db-{env}"}}]
        assert deployment["metadata"]["ownerReferences"][0]["kind"] == "MatchEnvironment"
        status = platform.status(env)
        assert status["phase"] == "Ready"
        assert status["queue"] == queue
        assert status["ready"] == f"{status['readyReplicas']}/{status['replicas']}"
        assert status["selector"] == f"app.kubernetes.io/component=worker,matchenv.io/environment={env}"
    assert mgmt.queue("matches.prod")["type"] == "quorum"
    lines = kubectl.run("get", "menv").stdout.splitlines()
    prod = next(line.split() for line in lines if line.startswith("prod "))
    assert prod[1] == "matches.prod"
    assert prod[-2] == "Ready"


def test_one_publish_lands_once_in_every_queue(platform: Platform) -> None:
    for env in ENVS:
        platform.purge(f"matches.{env}")
    platform.publish()
    for env in ENVS:
        wait_for(lambda e=env: platform.messages(f"matches.{e}") == 1, what=f"1 message in matches.{env}")
    wait_for(lambda: platform.status("staging").get("messages") == 1, what="status.messages == 1")
    for env in ENVS:
        platform.purge(f"matches.{env}")


def test_environment_user_cannot_read_another_environments_queue(platform: Platform) -> None:
    url = secret_value(platform.kubectl, "default", "dev-broker", "url")
    assert url.startswith(f"amqp://{platform.user('dev')}:")
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        conn.channel().basic_consume("matches.dev", lambda *a: None)  # its own queue: allowed
    with pika.BlockingConnection(pika.URLParameters(url)) as conn, \
            pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        conn.channel().basic_consume("matches.prod", lambda *a: None)
    assert info.value.reply_code == 403
    assert "ACCESS_REFUSED" in info.value.reply_text


def test_hand_deleted_binding_queue_and_deployment_are_repaired(platform: Platform) -> None:
    mgmt, kubectl = platform.mgmt, platform.kubectl
    binding = mgmt.bindings("matches-fanout", "matches.staging")[0]
    mgmt.delete(f"/api/bindings/%2F/e/matches-fanout/q/matches.staging/{binding['properties_key']}")
    wait_for(lambda: len(mgmt.bindings("matches-fanout", "matches.staging")) == 1, timeout=4 * RESYNC + 10,
             what="binding repaired")
    mgmt.delete("/api/queues/%2F/matches.staging")
    kubectl.run("delete", "deployment", "staging-workers", "--wait=false")
    wait_for(lambda: mgmt.queue("matches.staging") is not None and
             len(mgmt.bindings("matches-fanout", "matches.staging")) == 1, timeout=4 * RESYNC + 10,
             what="queue and binding repaired")
    wait_for(lambda: kubectl.run("get", "deployment", "staging-workers", check=False).returncode == 0,
             timeout=4 * RESYNC + 10, what="deployment repaired")
    wait_for(lambda: platform.is_ready("staging"), what="staging Ready again")


def test_the_broker_s_own_events_start_the_repairs(platform: Platform) -> None:
    """The broker's events (rabbitmq_event_exchange) name what went; the leader converges that environment at once
    (the time this takes beside a resync is measured by ``make bench``)."""
    mgmt, operator = platform.mgmt, platform.operator
    wait_for(lambda: platform.is_ready("staging"), what="staging Ready")
    before = operator.metric("matchenv_drift_repairs_total")
    mgmt.delete("/api/exchanges/%2F/matches.staging.dlx")
    mgmt.delete(f"/api/users/{platform.user('staging')}")
    wait_for(lambda: mgmt.get("/api/exchanges/%2F/matches.staging.dlx") is not None and
             mgmt.user(platform.user("staging")) is not None, timeout=4 * RESYNC + 10,
             what="dead-letter exchange and user repaired")
    assert operator.metric("matchenv_broker_events_total") >= 2
    assert operator.metric("matchenv_drift_repairs_total") > before
    wait_for(lambda: platform.is_ready("staging"), what="staging Ready again")


def test_hand_edited_deployment_is_put_back(platform: Platform) -> None:
    kubectl = platform.kubectl
    kubectl.run("patch", "deployment", "staging-workers", "--type=json", "-p",
                json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": "other"}]))
    wait_for(lambda: kubectl.get_json("deployment", "staging-workers")["spec"]["template"]["spec"]["containers"][0]
             ["args"][1] == "matches.staging", timeout=4 * RESYNC + 10, what="args put back")


def test_hands_off_keeps_what_was_changed_by_hand_until_the_annotation_goes(platform: Platform) -> None:
    kubectl, mgmt = platform.kubectl, platform.mgmt
    wait_for(lambda: platform.is_ready("staging"), what="staging Ready")
    kubectl.run("annotate", "menv", "staging", f"{RECONCILE_ANNOTATION}=false")
    try:
        wait_for(lambda: (platform.condition("staging", "ReconciliationPaused") or {}).get("status") == "True",
                 timeout=10, what="the ReconciliationPaused condition")
        replicas = kubectl.get_json("deployment", "staging-workers")["spec"]["replicas"]
        binding = mgmt.bindings("matches-fanout", "matches.staging")[0]
        mgmt.delete(f"/api/bindings/%2F/e/matches-fanout/q/matches.staging/{binding['properties_key']}")
        kubectl.run("scale", "deployment", "staging-workers", f"--replicas={replicas + 2}")
        time.sleep(3 * RESYNC + 2)  # the broker's event, the Deployment's watch and three resync passes came and went
        assert mgmt.bindings("matches-fanout", "matches.staging") == []
        assert kubectl.get_json("deployment", "staging-workers")["spec"]["replicas"] == replicas + 2
        paused = platform.condition("staging", "ReconciliationPaused")
        assert paused is not None
        assert (paused["reason"], RECONCILE_ANNOTATION in paused["message"]) == ("HandsOff", True)
        events = yaml.safe_load(kubectl.run("get", "events", "--field-selector", "involvedObject.name=staging",
                                            "-o", "yaml").stdout)["items"]
        assert [e["count"] if e.get("count") else 1 for e in events if e["reason"] == "ReconciliationPaused"] == [1]

        kubectl.run("annotate", "menv", "staging", f"{RECONCILE_ANNOTATION}-")
        removed = time.monotonic()
        wait_for(lambda: len(mgmt.bindings("matches-fanout", "matches.staging")) == 1, timeout=4 * RESYNC + 10,
                 every=0.05, what="the binding repaired")
        repaired = time.monotonic() - removed
        wait_for(lambda: kubectl.get_json("deployment", "staging-workers")["spec"]["replicas"] == replicas,
                 timeout=4 * RESYNC + 10, what="the replicas put back")
        wait_for(lambda: platform.condition("staging", "ReconciliationPaused") is None and platform.is_ready("staging"),
                 what="staging Ready, no longer paused")
        print(f"\nhands off: the binding deleted and the workers scaled by hand stayed for {3 * RESYNC + 2:.0f}s; "
              f"the annotation removed -> binding back after {repaired:.2f}s (resync every {RESYNC:.0f}s)")
    finally:  # never leave staging hands off for the tests after this one
        kubectl.run("annotate", "menv", "staging", f"{RECONCILE_ANNOTATION}-", check=False)


def test_an_environment_past_expire_after_is_deleted_as_its_deletion_policy_says(platform: Platform) -> None:
    kubectl, mgmt = platform.kubectl, platform.mgmt
    kubectl.apply(environment("pr-7", expireAfter="30s", deletionPolicy="Delete"))
    wait_for(lambda: platform.status("pr-7").get("expiresAt"), what="status.expiresAt")
    created = dt.datetime.fromisoformat(kubectl.get_json("menv", "pr-7")["metadata"]["creationTimestamp"]
                                        .replace("Z", "+00:00"))
    expires = platform.status("pr-7")["expiresAt"]
    assert dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) == created + dt.timedelta(seconds=30)
    row = next(line.split() for line in kubectl.run("get", "menv").stdout.splitlines() if line.startswith("pr-7 "))
    assert expires in row  # the EXPIRES column
    wait_for(lambda: mgmt.queue("matches.pr-7") is not None, what="its queue")
    wait_for(lambda: kubectl.run("get", "menv", "pr-7", check=False).returncode != 0, timeout=30 + 4 * RESYNC + 30,
             every=0.2, what="pr-7 gone once expired")
    gone = dt.datetime.now(dt.UTC) - created
    assert gone >= dt.timedelta(seconds=30)
    assert mgmt.queue("matches.pr-7") is None  # deletionPolicy Delete
    assert mgmt.user(platform.user("pr-7")) is None
    kubectl.wait_event("pr-7", "Expired", containing="expireAfter 30s from its creation")
    print(f"\nexpireAfter 30s: gone {gone.total_seconds():.1f}s after its creation (resync every {RESYNC:.0f}s)")


def test_a_user_with_leave_on_one_environment_redrives_its_store_errors_and_no_other(platform: Platform) -> None:
    kubectl = platform.kubectl
    wait_for(lambda: platform.is_ready("dev") and platform.is_ready("prod"), what="dev and prod Ready")
    platform.purge("matches.dev")
    with pika.BlockingConnection(pika.URLParameters(platform.rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for i, reason in enumerate(["store-error", "invalid", "store-error", "store-error", "invalid"]):
            channel.basic_publish("", "matches.dev.dlq", json.dumps({"n": i}).encode(), pika.BasicProperties(
                delivery_mode=2, headers={REASON_HEADER: reason}))
    wait_for(lambda: platform.messages("matches.dev.dlq") == 5, what="5 dead letters")
    # a developer who may edit the MatchEnvironment dev, nothing else: no Secret, no path to the broker
    kubectl.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dev-owner"}})
    kubectl.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "dev-owner"},
                   "rules": [{"apiGroups": ["matchenv.io"], "resources": ["matchenvironments"],
                              "resourceNames": ["dev"], "verbs": ["get", "patch"]}]})
    kubectl.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "dev-owner"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dev-owner"},
                   "subjects": [{"kind": "ServiceAccount", "name": "dev-owner", "namespace": "default"}]})
    as_owner = "--as=system:serviceaccount:default:dev-owner"
    ask = json.dumps({"spec": {"deadLetterRequest": {"id": "fix-1", "reason": "store-error"}}})
    refused = kubectl.run("patch", "menv", "prod", "--type=merge", "-p", ask, as_owner, check=False)
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower()
    assert kubectl.run("get", "secret", "prod-broker", as_owner, check=False).returncode != 0
    kubectl.run("patch", "menv", "dev", "--type=merge", "-p", ask, as_owner)
    wait_for(lambda: (platform.status("dev").get("deadLetterRequest") or {}).get("id") == "fix-1", timeout=30,
             what="the request carried out")
    record = platform.status("dev")["deadLetterRequest"]
    assert (record["succeeded"], record["done"], record["left"]) == (True, 3, 2), record
    wait_for(lambda: platform.messages("matches.dev") == 3 and platform.messages("matches.dev.dlq") == 2,
             what="3 back in matches.dev, the 2 invalid ones left")
    assert "deadLetterRequest" not in platform.status("prod")
    kubectl.wait_event("dev", "DeadLettersRedriven", containing="request fix-1: 3 store-error")
    platform.purge("matches.dev")
    platform.purge("matches.dev.dlq")


def test_max_length_change_applies_to_the_live_queue(platform: Platform) -> None:
    platform.purge("matches.staging")
    platform.publish(b'{"kept": true}')
    wait_for(lambda: platform.messages("matches.staging") == 1, what="one message")
    platform.kubectl.run("patch", "menv", "staging", "--type=merge", "-p", '{"spec":{"queue":{"maxLength":7}}}')
    wait_for(lambda: (platform.mgmt.policy("matchenv.matches.staging") or {}).get("definition", {})
             .get("max-length") == 7, what="policy max-length 7")
    wait_for(lambda: (platform.mgmt.queue("matches.staging") or {}).get("effective_policy_definition", {})
             .get("max-length") == 7, what="queue sees max-length 7")
    assert platform.messages("matches.staging") == 1  # the same queue: its message is still there
    platform.purge("matches.staging")


def test_database_secret_change_rolls_the_workers(platform: Platform) -> None:
    kubectl = platform.kubectl

    def template_hash() -> str:
        meta = kubectl.get_json("deployment", "staging-workers")["spec"]["template"]["metadata"]
        return str(meta["annotations"][SECRETS_HASH_ANNOTATION])

    before = template_hash()
    kubectl.apply(db_secret("staging", "postgresql://matchenv@127.0.0.1:5432/rotated"))
    after = wait_for(lambda: template_hash() != before and template_hash(), timeout=4 * RESYNC + 10,
                     what="new pod-template hash")
    assert after != before
    rs = kubectl.get_json("replicasets", "-l", "matchenv.io/environment=staging")["items"]
    assert len({r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] for r in rs}) >= 2


def test_broker_outage_degrades_and_heals_without_restart(platform: Platform) -> None:
    pid = platform.operator.pid
    platform.rabbitmq.stop()
    try:
        wait_for(lambda: platform.status("prod").get("phase") == "Degraded", timeout=30, what="Degraded")
        status = platform.status("prod")
        topology = platform.condition("prod", "TopologyReady")
        assert topology is not None
        assert topology["status"] == "False"
        assert topology["reason"] == "BrokerUnreachable"
        assert "broker unreachable" in status["lastError"]
        assert platform.operator.alive()
    finally:
        platform.rabbitmq.start()
    for env in ENVS:
        wait_for(lambda e=env: platform.is_ready(e), timeout=60, what=f"{env} Ready again")
    assert platform.status("prod").get("lastError") is None
    assert platform.operator.alive()
    assert platform.operator.pid == pid


def test_killed_operator_restarts_and_converges_without_duplicates(platform: Platform) -> None:
    kubectl = platform.kubectl
    kubectl.apply(environment("preview"))
    platform.operator.kill()  # mid-reconcile: the create handler may be anywhere
    platform.operator = OperatorProcess(platform.sa_kubeconfig, platform.tmp / "operator-2.log",
                                        resync_seconds=RESYNC, identity="operator-b").start()
    wait_for(lambda: platform.is_ready("preview"), timeout=90, what="preview Ready after restart")
    assert len(platform.mgmt.bindings("matches-fanout", "matches.preview")) == 1
    deployments = kubectl.get_json("deployments", "-l", "matchenv.io/environment=preview")["items"]
    assert len(deployments) == 1
    secrets = kubectl.get_json("secrets", "-l", "matchenv.io/environment=preview")["items"]
    assert [s["metadata"]["name"] for s in secrets] == ["preview-broker"]
    ours = platform.user("").removesuffix(".")  # matchenv-env.<cluster>.default
    users = [u["name"] for u in platform.mgmt.get("/api/users") if u["name"].startswith(f"{ours}.")]
    assert sorted(users) == sorted(platform.user(e) for e in (*ENVS, "preview"))


def test_a_change_made_while_the_operator_was_away_is_applied_when_it_is_back(platform: Platform) -> None:
    """No operator runs while an environment's spec changes: the next one applies the change when it starts."""
    kubectl = platform.kubectl
    kubectl.apply(db_secret("away"))
    kubectl.apply(environment("away"))
    wait_for(lambda: platform.is_ready("away"), timeout=60, what="away Ready")
    platform.operator.stop()
    kubectl.run("patch", "menv", "away", "--type", "merge", "-p", json.dumps({"spec": {"workers": {"concurrency": 3}}}))
    generation = kubectl.get_json("menv", "away")["metadata"]["generation"]
    platform.operator = OperatorProcess(platform.sa_kubeconfig, platform.tmp / "operator-away.log",
                                        resync_seconds=RESYNC, identity="operator-away").start()

    def applied() -> bool:
        args = kubectl.get_json("deployment", "away-workers")["spec"]["template"]["spec"]["containers"][0]["args"]
        return args[args.index("--concurrency") + 1] == "3" and platform.status("away").get("observedGeneration") \
            == generation

    wait_for(applied, timeout=60, what="the change made while away applied")
    kubectl.run("delete", "menv", "away", "--timeout=60s")


def _with_own_broker_secret(platform: Platform, env: str, secret_name: str) -> dict[str, Any]:
    """Environment ``env`` on the broker through a connection Secret of its own (``secret_name``), Ready."""
    secret = broker_secret(platform.rabbitmq)
    secret["metadata"] = {"name": secret_name, "namespace": "default"}
    platform.kubectl.apply(secret)
    platform.kubectl.apply(db_secret(env))
    platform.kubectl.apply(environment(env, broker={"connectionSecretRef": {"name": secret_name}}))
    wait_for(lambda: platform.is_ready(env), timeout=60, what=f"{env} Ready")
    return secret


def test_environment_with_its_ownbroker_secret(platform: Platform) -> None:
    kubectl = platform.kubectl
    secret = _with_own_broker_secret(platform, "ownbroker", "team-broker")
    assert len(platform.mgmt.bindings("matches-fanout", "matches.ownbroker")) == 1
    kubectl.run("delete", "secret", "team-broker")
    kubectl.run("delete", "menv", "ownbroker", "--wait=false")
    # without its broker Secret the delete cannot unbind: the finalizer holds and the reason is reported
    wait_for(lambda: "broker Secret default/team-broker not found" in (platform.status("ownbroker").get("lastError")
                                                                        or ""), timeout=30, what="reason reported")
    assert len(platform.mgmt.bindings("matches-fanout", "matches.ownbroker")) == 1
    kubectl.apply(secret)
    wait_for(lambda: kubectl.run("get", "menv", "ownbroker", check=False).returncode != 0, timeout=60,
             what="delete completes once the Secret is back")
    assert platform.mgmt.bindings("matches-fanout", "matches.ownbroker") == []


def test_a_moved_environment_lets_go_of_its_old_vhost_and_a_lost_secret_is_let_go_by_annotation(
        platform: Platform) -> None:
    kubectl, mgmt, ep = platform.kubectl, platform.mgmt, platform.rabbitmq.endpoints
    admin = ManagementClient(ep.management_url, ep.username, ep.password)
    admin.put_vhost("team-v")
    admin.set_permissions("team-v", ep.username, ".*", ".*", ".*")
    _with_own_broker_secret(platform, "mover", "team-v-connection")
    assert mgmt.get(f"/api/permissions/%2F/{platform.user('mover')}") is not None
    kubectl.run("patch", "menv", "mover", "--type", "merge", "-p", '{"spec": {"broker": {"vhost": "team-v"}}}')
    wait_for(lambda: (platform.status("mover").get("placement") or {}).get("vhost") == "team-v"
             and platform.is_ready("mover"), timeout=60, what="mover Ready in vhost team-v")
    assert len(mgmt.bindings("matches-fanout", "matches.mover", vhost="team-v")) == 1
    assert mgmt.bindings("matches-fanout", "matches.mover") == []  # the old queue: unbound, kept (Retain)
    assert mgmt.queue("matches.mover") is not None
    assert mgmt.get(f"/api/permissions/%2F/{platform.user('mover')}") is None  # the old vhost's permissions gone
    # the connection Secret goes first (as in a namespace deletion): the deletion waits, and says how to let go
    kubectl.run("delete", "secret", "team-v-connection")
    kubectl.run("delete", "menv", "mover", "--wait=false")
    wait_for(lambda: "matchenv.io/abandon-broker=true" in (platform.status("mover").get("lastError") or ""),
             timeout=30, what="the way out named")
    kubectl.run("annotate", "menv", "mover", "matchenv.io/abandon-broker=true")
    wait_for(lambda: kubectl.run("get", "menv", "mover", check=False).returncode != 0, timeout=60,
             what="the deletion ends")
    abandoned = kubectl.wait_event("mover", "BrokerAbandoned")
    assert len(abandoned) == 1
    assert "queue matches.mover with its messages" in abandoned[0]
    assert kubectl.run("get", "deployment", "mover-workers", check=False).returncode != 0
    mgmt.delete("/api/queues/%2F/matches.mover")
    admin.delete_user(platform.user("mover"))
    mgmt.delete("/api/vhosts/team-v")
    admin.close()


def test_management_calls_per_resync_do_not_grow_with_environments(platform: Platform) -> None:
    wait_for(lambda: all(platform.is_ready(e) for e in (*ENVS, "preview")), what="all Ready")
    # four environments, one broker: a quiet pass reads one snapshot = 2 calls (the definitions, and the queues
    # with their counts), the same as for one environment. (A pass that repairs something also reads and writes
    # that environment's objects, so the test waits for a quiet one: a pass that kept repairing would never come.)
    wait_for(lambda: platform.operator.metric("matchenv_resync_management_calls") == 2,
             timeout=10 * RESYNC, every=RESYNC / 4, what="a quiet resync pass of 2 management calls")


def test_the_leader_exports_each_environment_as_its_status_says(platform: Platform) -> None:
    wait_for(lambda: all(platform.is_ready(e) for e in ENVS), what="all Ready")
    operator = platform.operator
    assert operator.metric("matchenv_leader") == 1
    for env in ENVS:
        labels = {"namespace": "default", "name": env}
        wait_for(lambda labels=labels: operator.metric("matchenv_environment_phase", {**labels, "phase": "Ready"}) == 1,
                 timeout=3 * RESYNC, what=f"{env} Ready in its metrics")
        status = platform.status(env)
        assert operator.metric("matchenv_environment_info", {**labels, "exchange": status["exchange"],
                                                             "queue": status["queue"]}) == 1
        assert operator.metric("matchenv_environment_replicas_desired", labels) == status["replicas"]
        assert operator.metric("matchenv_environment_condition",
                               {**labels, "condition": "Ready", "status": "true"}) == 1
        assert (operator.metric("matchenv_environment_last_converge_timestamp_seconds", labels) or 0) > 1.7e9


def test_standby_takes_over_when_the_leader_dies(platform: Platform) -> None:
    standby = OperatorProcess(platform.sa_kubeconfig, platform.tmp / "standby.log", resync_seconds=RESYNC,
                              identity="operator-standby").start()
    try:
        wait_for(lambda: "standing by" in standby.log(), timeout=30, what="standby announces itself")
        platform.operator.kill()
        wait_for(lambda: "took over lease" in standby.log() or "acquired lease" in standby.log(), timeout=40,
                 what="standby takes over")
        platform.kubectl.apply(environment("handover"))
        platform.kubectl.apply(db_secret("handover"))
        wait_for(lambda: platform.is_ready("handover"), timeout=60, what="new leader converges")
        platform.kubectl.run("delete", "menv", "handover", "--timeout=60s")
    finally:
        platform.operator = standby


def test_an_environment_deleted_as_it_is_applied_goes_and_leaves_nothing_behind(platform: Platform) -> None:
    """Deleted before, during or just after its first converge: the deletion never hangs, and nothing of it stays
    (the finalizer is on before anything is made, and nothing is made once it is going)."""
    kubectl, mgmt = platform.kubectl, platform.mgmt
    names = [f"flash{i}" for i in range(5)]
    for name in names:
        kubectl.apply(db_secret(name))
    for name in names:
        kubectl.apply(environment(name, deletionPolicy="Delete"))
        kubectl.run("delete", "menv", name, "--wait=false")
    wait_for(lambda: all(kubectl.run("get", "menv", n, check=False).returncode != 0 for n in names), timeout=60,
             what="every deletion done")
    time.sleep(2)  # a converge still queued for one of them would have made something by now
    for name in names:
        assert mgmt.queue(f"matches.{name}") is None
        assert mgmt.queue(f"matches.{name}.dlq") is None
        assert mgmt.user(platform.user(name)) is None
        assert kubectl.run("get", "deployment", f"{name}-workers", check=False).returncode != 0
        assert kubectl.run("get", "secret", f"{name}-broker", check=False).returncode != 0


def test_delete_unbinds_and_keeps_or_deletes_the_queue(platform: Platform) -> None:
    kubectl, mgmt = platform.kubectl, platform.mgmt
    for env in ("staging", "dev"):
        platform.purge(f"matches.{env}")
    platform.publish(b'{"last": true}')
    for env in ("staging", "dev"):
        wait_for(lambda e=env: platform.messages(f"matches.{e}") == 1, what=f"message in {env}")
    kubectl.run("delete", "menv", "staging", "dev", "--timeout=60s", timeout=90)
    # Retain (staging): unbound, user gone, the queue and its message kept
    assert mgmt.bindings("matches-fanout", "matches.staging") == []
    assert mgmt.user(platform.user("staging")) is None
    assert platform.messages("matches.staging") == 1
    # Delete (dev): the queue and its dead-letter queue are gone too
    assert mgmt.queue("matches.dev") is None
    assert mgmt.queue("matches.dev.dlq") is None
    assert mgmt.user(platform.user("dev")) is None
    for env in ("staging", "dev"):
        assert kubectl.run("get", "deployment", f"{env}-workers", check=False).returncode != 0
        assert kubectl.run("get", "secret", f"{env}-broker", check=False).returncode != 0
    # prod untouched
    assert platform.is_ready("prod")
    assert len(mgmt.bindings("matches-fanout", "matches.prod")) == 1
    kubectl.wait_event("staging", "TornDown", containing="kept queue matches.staging and its messages "
                                                         "(deletionPolicy Retain)")
    assert kubectl.events("staging", "BrokerChanged")
    assert kubectl.events("staging", "DeploymentCreated")
    platform.mgmt.delete("/api/queues/%2F/matches.staging")


def test_sigterm_stops_the_operator_and_releases_the_lease(platform: Platform) -> None:
    assert platform.operator.stop(timeout=20) == 0
    lease = platform.kubectl.get_json("lease", "matchenv-operator", "-n", "matchenv-system")
    assert lease["spec"].get("holderIdentity") in (None, "")
    assert "released lease" in platform.operator.log()
    platform.operator = OperatorProcess(platform.sa_kubeconfig, platform.tmp / "operator-3.log",
                                        resync_seconds=RESYNC, identity="operator-c").start()
    wait_for(lambda: "acquired lease" in platform.operator.log() or "took over lease" in platform.operator.log(),
             timeout=20, what="a new operator leads at once")

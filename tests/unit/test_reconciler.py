"""The reconciler against in-memory fakes of the broker and the Kubernetes seam: ownership, credentials, failure
isolation, deletion order and the status it writes, in milliseconds. (The e2e tier runs the same code against a
real API server and RabbitMQ.)"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from matchenv.operator.reconciler import ROTATE_ANNOTATION, Reconciler, TeardownIncomplete
from matchenv.operator.settings import OperatorSettings
from tests.cases import environment
from tests.fakes import FakeClients, FakeKube, SimulatedBroker

ADMIN = {"url": "amqp://rabbitmq:5672", "management-url": "http://rabbitmq:15672", "username": "admin",
         "password": "admin-pw"}


class World:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.broker = SimulatedBroker()
        self.kube.add_secret("matchenv-system", "matchenv-broker", ADMIN)
        self.clients = FakeClients(self.broker, {"admin-pw"})
        self.settings = OperatorSettings(resync_seconds=1, leader_election=False)
        self.reconciler = Reconciler(self.kube, self.settings, clients=self.clients,  # type: ignore[arg-type]
                                     stop_wait=0)

    def add(self, name: str, namespace: str = "default", annotations: dict[str, str] | None = None,
            **spec: Any) -> dict[str, Any]:
        body = environment(name, **spec)["spec"]
        self.kube.add_secret(namespace, f"matchenv-db-{name}", {"DATABASE_URL": "postgresql://db/x"})
        return self.kube.add_environment(namespace, name, body, annotations)

    def converge(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.reconciler.converge(self.kube.environment(namespace, name))

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        status: dict[str, Any] = self.kube.environments[(namespace, name)].get("status") or {}
        return status

    def reason(self, name: str, type_: str = "TopologyReady", namespace: str = "default") -> str:
        conditions = {c["type"]: c for c in self.status(name, namespace).get("conditions", [])}
        return str(conditions[type_]["reason"])

    def delete(self, name: str, namespace: str = "default") -> list[str]:
        """The delete handler as kopf retries it, with the workers' pods gone in between."""
        env = self.kube.environment(namespace, name)
        for _ in range(3):
            try:
                return self.reconciler.teardown(env)
            except TeardownIncomplete:
                self.kube.finish_deletions()
        raise AssertionError("teardown did not finish")

    def password(self, name: str, namespace: str = "default") -> str:
        return base64.b64decode(self.kube.secrets[(namespace, f"{name}-broker")]["data"]["password"]).decode()


@pytest.fixture
def world() -> World:
    return World()


def test_converge_then_converge_again_writes_nothing(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    assert ("/", "matches.prod") in world.broker.queues
    writes, calls = dict(world.kube.writes), world.broker.calls
    world.converge("prod")
    assert dict(world.kube.writes) == writes
    assert world.broker.calls == calls + 1  # one snapshot, no writes
    assert world.broker.put_users["matchenv.default.prod"] == 1


def test_the_second_team_gets_a_clear_refusal_and_nothing_of_the_first(world: World) -> None:
    world.add("prod", queue={"maxLength": 1000})  # with a policy, which the other team must not touch
    world.converge("prod")
    world.add("prod", "other", deletionPolicy="Delete")
    world.converge("prod", "other")
    assert world.status("prod", "other")["phase"] == "Degraded"
    assert world.reason("prod", namespace="other") == "QueueClaimed"
    assert "default/prod" in world.status("prod", "other")["lastError"]
    assert ("matchenv.other.prod", "/") not in world.broker.permissions
    assert world.kube.deployments[("other", "prod-workers")]["spec"]["replicas"] == 0
    # its deletion leaves prod's queue, dead-letter queue and policy alone
    world.delete("prod", "other")
    assert {("/", "matches.prod"), ("/", "matches.prod.dlq")} <= set(world.broker.queues)
    assert ("/", "matchenv.matches.prod") in world.broker.policies
    assert any(b.destination == "matches.prod" for b in world.broker.bindings)


@pytest.mark.parametrize(("spec", "setting"), [
    ({"queue": {"name": "orders"}}, "MATCHENV_QUEUE_PATTERN"),
    ({"exchange": {"name": "orders-events"}}, "MATCHENV_ALLOWED_EXCHANGES"),
    ({"broker": {"vhost": "billing"}}, "MATCHENV_ALLOWED_VHOSTS"),
])
def test_the_administrators_bounds_name_the_setting(world: World, spec: dict[str, Any], setting: str) -> None:
    world.add("tenant", **spec)
    world.converge("tenant")
    assert world.reason("tenant") == "NotAllowed"
    assert setting in world.status("tenant")["lastError"]
    assert world.broker.calls == 0  # refused before any broker call


def test_own_broker_secret_is_not_bound_by_the_operators_bounds(world: World) -> None:
    world.kube.add_secret("default", "team-broker", ADMIN)
    world.add("tenant", queue={"name": "orders"}, broker={"connectionSecretRef": {"name": "team-broker"}})
    world.converge("tenant")
    assert world.status("tenant")["phase"] != "Degraded"
    assert ("/", "orders") in world.broker.queues


def test_a_wrong_password_degrades_one_environment_and_no_other(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    world.kube.add_secret("default", "bad-admin", {**ADMIN, "password": "wrong"})
    world.add("bad", broker={"connectionSecretRef": {"name": "bad-admin"}})
    world.kube.add_secret("default", "binary-admin", {})
    world.kube.secrets[("default", "binary-admin")]["data"] = {k: base64.b64encode(b"\xff\xfe").decode()
                                                                 for k in ADMIN}
    world.add("binary", broker={"connectionSecretRef": {"name": "binary-admin"}})
    world.broker.bindings.clear()  # drift on prod, to be repaired by the same pass
    report = world.reconciler.resync_all()
    assert report.failures == 0
    assert world.reason("bad") == "BrokerAuthFailed"
    assert world.reason("binary") == "BrokerSecretInvalid"
    assert "not UTF-8" in world.status("binary")["lastError"]
    assert world.status("prod")["phase"] == "Ready" or world.reason("prod", "TopologyReady") == "Converged"
    assert any(b.source == "matches-fanout" and b.destination == "matches.prod" for b in world.broker.bindings)


def test_a_password_changed_on_the_broker_is_put_back(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    world.broker.put_user("matchenv.default.prod", "changed-by-hand")
    world.reconciler.resync_all()
    assert world.broker.users["matchenv.default.prod"].has_password(world.password("prod"))


def test_a_secret_whose_password_the_user_never_got_converges(world: World) -> None:
    world.add("prod")
    world.broker.down = True
    world.converge("prod")
    assert world.reason("prod") == "BrokerUnreachable"
    world.broker.down = False
    world.converge("prod")
    # a Secret written, then the broker call lost: the Secret's password is not the user's
    secret = world.kube.secrets[("default", "prod-broker")]
    secret["data"]["password"] = base64.b64encode(b"minted-meanwhile").decode()
    world.reconciler.resync_all()
    assert world.password("prod") == "minted-meanwhile"
    assert world.broker.users["matchenv.default.prod"].has_password("minted-meanwhile")


def test_rotation_issues_a_new_password_once_and_rolls_the_workers(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    old = world.password("prod")
    template = world.kube.deployments[("default", "prod-workers")]["spec"]["template"]
    world.kube.environments[("default", "prod")]["metadata"]["annotations"][ROTATE_ANNOTATION] = "2026-11-23"
    world.converge("prod")
    new = world.password("prod")
    assert new != old
    user = world.broker.users["matchenv.default.prod"]
    assert user.has_password(new)
    assert not user.has_password(old)
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["template"] != template
    world.converge("prod")
    assert world.password("prod") == new  # the same annotation value rotates once


def test_a_pass_reading_a_stale_secret_list_never_mints_again(world: World) -> None:
    for i in range(20):
        world.add(f"env{i}")
    # the pass lists Secrets before any handler ran; each handler converges during the pass
    real_list = world.kube.list_secrets
    stale = real_list("app.kubernetes.io/managed-by=matchenv")

    def listing(selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        for i in range(20):
            world.converge(f"env{i}")  # the create handlers, racing the pass
        return stale

    world.kube.list_secrets = listing  # type: ignore[method-assign]
    world.reconciler.resync_all()
    world.kube.list_secrets = real_list  # type: ignore[method-assign]
    world.reconciler.resync_all()
    assert set(world.broker.put_users.values()) == {1}
    assert world.kube.writes["deployment"] == 20  # one revision each


def test_a_hand_made_secret_is_not_overwritten(world: World) -> None:
    world.kube.add_secret("default", "prod-broker", {"url": "amqp://someone-else"})
    world.add("prod")
    world.converge("prod")
    assert world.reason("prod") == "SecretNotOwned"
    assert world.kube.secrets[("default", "prod-broker")]["data"]["url"] == base64.b64encode(
        b"amqp://someone-else").decode()
    assert "matchenv.default.prod" not in world.broker.users
    world.delete("prod")
    assert ("default", "prod-broker") in world.kube.secrets  # not deleted either


def test_a_hand_made_deployment_is_not_taken_over(world: World) -> None:
    world.kube.deployments[("default", "prod-workers")] = {"metadata": {"name": "prod-workers", "uid": "x"},
                                                           "spec": {"replicas": 5}}
    world.add("prod")
    world.converge("prod")
    assert world.reason("prod", "WorkersReady") == "DeploymentNotOwned"
    assert world.kube.deployments[("default", "prod-workers")]["spec"] == {"replicas": 5}


def test_a_deployment_the_api_server_refuses_is_reported(world: World) -> None:
    world.add("prod")
    world.kube.refuse_deployments = 'Deployment.apps "prod-workers" is invalid: spec.template...: Invalid value'
    world.converge("prod")
    assert world.status("prod")["phase"] == "Degraded"
    assert world.reason("prod", "WorkersReady") == "DeploymentRefused"
    assert "is invalid" in world.status("prod")["lastError"]


def test_deletion_unbinds_then_waits_for_the_workers_then_drops_the_user(world: World) -> None:
    world.add("prod", deletionPolicy="Delete")
    world.converge("prod")
    env = world.kube.environment("default", "prod")
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(env)
    assert not any(b.destination == "matches.prod" and b.source == "matches-fanout" for b in world.broker.bindings)
    assert "matchenv.default.prod" in world.broker.users  # the workers still finish their messages
    assert world.kube.deployments[("default", "prod-workers")]["metadata"]["deletionTimestamp"]
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(env)  # pods still terminating
    world.kube.finish_deletions()
    world.reconciler.teardown(env)
    assert "matchenv.default.prod" not in world.broker.users
    assert ("/", "matches.prod") not in world.broker.queues
    assert ("default", "prod-broker") not in world.kube.secrets


def test_unknown_queue_counts_hold_the_autoscaler(world: World) -> None:
    from dataclasses import replace

    world.add("prod", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 10,
                                   "scaleDownStabilizationSeconds": 0},
              workers={"image": "matchenv:0.1.0", "replicas": 6, "databaseSecretRef": {"name": "matchenv-db-prod"}})
    world.converge("prod")
    key = ("/", "matches.prod")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=600, messages_ready=600)
    world.reconciler.resync_all()
    assert world.kube.environments[("default", "prod")]["spec"]["workers"]["replicas"] == 6
    world.broker.queues[key] = replace(world.broker.queues[key], messages=None, messages_ready=None,
                                       messages_unacknowledged=None, consumers=None)
    world.reconciler.resync_all()
    assert world.kube.environments[("default", "prod")]["spec"]["workers"]["replicas"] == 6  # held, not 1
    assert "unknown" in next(c["message"] for c in world.status("prod")["conditions"]
                             if c["type"] == "TopologyReady")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=0, messages_ready=0,
                                       messages_unacknowledged=0, consumers=0)
    world.reconciler.resync_all()
    assert world.kube.environments[("default", "prod")]["spec"]["workers"]["replicas"] == 1  # known: scaled down


def test_an_out_of_bounds_environment_never_deletes_the_queue_it_named(world: World) -> None:
    world.broker.declare_queue("/", "orders", {"x-queue-type": "classic"})  # another application's queue
    world.add("grabber", queue={"name": "orders", "adopt": True}, deletionPolicy="Delete")
    world.converge("grabber")
    assert world.reason("grabber") == "NotAllowed"
    world.delete("grabber")
    assert ("/", "orders") in world.broker.queues
    assert any(e[1] == "QueueLeftAlone" for e in world.kube.events)


def test_the_scraper_gets_a_publish_only_user_whose_password_is_in_its_secret(world: World) -> None:
    world.reconciler.resync_all()
    secret = world.kube.secrets[("matchenv-system", "matchenv-publisher")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    user = "matchenv-publisher.matchenv-system"
    assert data["username"] == user
    assert data["url"] == f"amqp://{user}:{data['password']}@rabbitmq:5672/%2F"
    assert world.broker.users[user].has_password(data["password"])
    perms = world.broker.permissions[(user, "/")]
    # publish to the fanout and nothing else: no queue to declare or read, not the default exchange
    assert (perms.configure, perms.write, perms.read) == ("", "^matches-fanout$", "")
    writes, calls = dict(world.kube.writes), world.broker.calls
    world.reconciler.resync_all()
    assert dict(world.kube.writes) == writes
    assert world.broker.calls == calls + 1


def test_a_deleted_publisher_user_comes_back_with_the_password_the_scraper_has(world: World) -> None:
    world.reconciler.resync_all()
    password = base64.b64decode(world.kube.secrets[("matchenv-system", "matchenv-publisher")]["data"]["password"])
    world.broker.delete_user("matchenv-publisher.matchenv-system")
    world.reconciler.resync_all()
    assert world.broker.users["matchenv-publisher.matchenv-system"].has_password(password.decode())


def test_a_publisher_secret_the_user_made_is_left_alone_and_so_is_the_broker(world: World) -> None:
    world.kube.add_secret("matchenv-system", "matchenv-publisher", {"url": "amqp://mine:pw@elsewhere/"})
    world.reconciler.resync_all()
    data = world.kube.secrets[("matchenv-system", "matchenv-publisher")]["data"]
    assert base64.b64decode(data["url"]).decode() == "amqp://mine:pw@elsewhere/"
    assert "matchenv-publisher.matchenv-system" not in world.broker.users


def test_no_publisher_when_turned_off(world: World) -> None:
    world.reconciler.settings = OperatorSettings.from_env({"MATCHENV_PUBLISHER_SECRET": ""}, leader_election=False)
    world.reconciler.resync_all()
    assert ("matchenv-system", "matchenv-publisher") not in world.kube.secrets
    assert not world.broker.users


def test_a_pass_that_listed_an_environment_before_its_deletion_puts_nothing_back(world: World) -> None:
    world.add("dev", deletionPolicy="Delete")
    world.converge("dev")
    real_list = world.kube.list_environments

    def listing(namespace: str | None = None) -> list[dict[str, Any]]:
        stale = real_list(namespace)  # read before the delete handler ran
        world.kube.list_environments = real_list  # type: ignore[method-assign]  # the teardown lists too
        world.delete("dev")
        del world.kube.environments[("default", "dev")]
        return stale

    world.kube.list_environments = listing  # type: ignore[method-assign]
    report = world.reconciler.resync_all()
    world.kube.list_environments = real_list  # type: ignore[method-assign]
    assert report.skipped == 1
    assert ("/", "matches.dev") not in world.broker.queues
    assert "matchenv.default.dev" not in world.broker.users
    assert not any(b.destination == "matches.dev" for b in world.broker.bindings)
    assert ("default", "dev-workers") not in world.kube.deployments
    assert ("default", "dev-broker") not in world.kube.secrets


def test_a_teardown_waiting_for_its_workers_is_not_undone_by_a_converge(world: World) -> None:
    world.add("dev")
    world.converge("dev")
    env = world.kube.environment("default", "dev")
    with pytest.raises(TeardownIncomplete):
        world.reconciler.teardown(env)  # unbound, Deployment deleting, pods still running
    assert world.reconciler.converge(env) is None
    assert not any(b.destination == "matches.dev" and b.source == "matches-fanout" for b in world.broker.bindings)
    assert world.kube.deployments[("default", "dev-workers")]["metadata"]["deletionTimestamp"]


def test_workers_ready_follows_the_deployment_without_a_resync(world: World) -> None:
    world.add("prod", workers={"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prod"},
                               "replicas": 2})
    world.converge("prod")
    assert world.status("prod")["phase"] != "Ready"
    key = ("default", "prod-workers")
    assert world.reconciler.workers_changed(world.kube.get_deployment(*key) or {}) is None  # first sight: noted
    writes = dict(world.kube.writes)
    assert world.reconciler.workers_changed(world.kube.get_deployment(*key) or {}) is None  # nothing moved
    assert dict(world.kube.writes) == writes
    live = world.kube.deployments[key]
    live["status"] = {"observedGeneration": live["metadata"].get("generation", 1), "replicas": 2,
                      "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    calls, writes = world.broker.calls, dict(world.kube.writes)
    assert world.reconciler.workers_changed(world.kube.get_deployment(*key) or {}) is not None
    assert world.status("prod")["phase"] == "Ready"
    assert world.status("prod")["ready"] == "2/2"
    # followed, not converged: no broker call, one status write
    assert world.broker.calls == calls
    assert world.kube.writes["status"] == writes.get("status", 0) + 1
    live["status"] = {**live["status"], "readyReplicas": 1, "availableReplicas": 1}  # a pod went unready
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})
    assert world.status("prod")["phase"] == "Pending"
    assert world.status("prod")["ready"] == "1/2"
    assert world.reason("prod", "Ready") == "WorkersUnavailable"


def test_a_hand_edited_deployment_seen_by_the_watch_is_put_back_at_once(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    key = ("default", "prod-workers")
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})  # first sight
    live = world.kube.deployments[key]
    live["spec"]["template"]["spec"]["containers"][0]["args"][1] = "other"
    live["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
    world.reconciler.workers_changed(world.kube.get_deployment(*key) or {})
    assert world.kube.deployments[key]["spec"]["template"]["spec"]["containers"][0]["args"][1] == "matches.prod"


def test_a_deleted_worker_deployment_is_put_back_at_once(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    key = ("default", "prod-workers")
    gone = world.kube.deployments.pop(key)
    world.reconciler.workers_changed(gone, deleted=True)
    assert key in world.kube.deployments


def test_a_deployment_of_someone_else_is_not_followed(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    foreign = {"metadata": {"namespace": "default", "name": "x", "uid": "u1",
                            "ownerReferences": [{"kind": "ReplicaSet", "name": "prod", "uid": "z"}]}}
    writes = dict(world.kube.writes)
    assert world.reconciler.workers_changed(foreign, deleted=True) is None
    assert dict(world.kube.writes) == writes


def test_kubectl_scale_on_an_autoscaled_environment_is_put_back_with_a_warning(world: World) -> None:
    from dataclasses import replace

    world.add("prod", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5})
    world.converge("prod")
    key = ("/", "matches.prod")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=1000, messages_ready=1000)
    world.reconciler.resync_all()
    env = world.kube.environments[("default", "prod")]
    assert env["spec"]["workers"]["replicas"] == 5
    assert env["metadata"]["annotations"]["matchenv.io/autoscaled-replicas"] == "5"
    assert world.status("prod")["autoscaling"]["replicas"] == 5
    env["spec"]["workers"]["replicas"] = 2  # kubectl scale menv/prod --replicas=2
    world.converge("prod")  # the update handler
    assert env["spec"]["workers"]["replicas"] == 5
    deployment = world.kube.deployments[("default", "prod-workers")]
    assert deployment["spec"]["replicas"] == 5  # never went to 2
    warning = [message for _, reason, message in world.kube.events if reason == "ManualScaleReverted"]
    assert len(warning) == 1
    assert "set to 2 by hand" in warning[0]
    assert world.status("prod")["autoscaling"]["message"] == warning[0]
    # turned off: the count is the user's again, and the bookkeeping goes
    env["spec"]["autoscaling"]["enabled"] = False
    env["spec"]["workers"]["replicas"] = 2
    world.converge("prod")
    assert env["spec"]["workers"]["replicas"] == 2
    assert "matchenv.io/autoscaled-replicas" not in env["metadata"].get("annotations", {})
    assert "autoscaling" not in world.status("prod")


def test_kubectl_scale_on_the_deployment_is_put_back_and_says_where_the_size_comes_from(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] = 7
    world.converge("prod")
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 2
    rescaled = [message for _, reason, message in world.kube.events if reason == "DeploymentRescaled"]
    assert rescaled == ["set Deployment prod-workers back to 2 replicas: its size is the MatchEnvironment's "
                        "spec.workers.replicas, which kubectl scale menv/prod changes"]



def test_a_paused_environment_runs_no_workers_and_keeps_its_queue_bound(world: World) -> None:
    from dataclasses import replace

    world.add("prod", paused=True, queue={"maxLength": 5000, "overflow": "reject-publish"},
              autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5})
    world.converge("prod")
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 0
    assert any(b.destination == "matches.prod" for b in world.broker.bindings)
    assert world.broker.policies[("/", "matchenv.matches.prod")].definition["overflow"] == "reject-publish"
    status = world.status("prod")
    assert status["phase"] == "Paused"
    assert world.reason("prod", "Ready") == "Paused"
    # a backlog does not wake it: the pause decides, not the autoscaler
    key = ("/", "matches.prod")
    world.broker.queues[key] = replace(world.broker.queues[key], messages=1000, messages_ready=1000)
    world.reconciler.resync_all()
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 0
    assert [r for _, r, _ in world.kube.events if r in ("Paused", "Resumed", "Scaled")] == ["Paused"]
    world.kube.environments[("default", "prod")]["spec"]["paused"] = False
    world.converge("prod")
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["replicas"] == 5  # the backlog's
    assert world.status("prod")["phase"] != "Paused"
    assert [r for _, r, _ in world.kube.events if r in ("Paused", "Resumed")] == ["Paused", "Resumed"]

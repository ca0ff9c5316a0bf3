"""The topology step (bounds, ownership, the broker objects, a moved environment's release, the administrator's length
cap, tenants' brokers), through the reconciler against in-memory fakes."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from matchenv.operator.errors import TeardownIncomplete
from tests.fakes import SimulatedBroker
from tests.unit.world import ADMIN, World


def test_converge_then_converge_again_writes_nothing(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    assert ("/", "matches.prod") in world.broker.queues
    writes, calls = dict(world.kube.writes), world.broker.calls
    world.converge("prod")
    assert dict(world.kube.writes) == writes
    assert world.broker.calls == calls + 1  # one snapshot, no writes
    assert world.broker.put_users["matchenv-env.c1.default.prod"] == 1


def test_the_loser_of_a_race_for_one_queue_gives_its_permissions_back_at_once(world: World) -> None:
    """Two environments declare one queue at the same moment: the marker the broker kept decides, and the loser's
    user is left no access to the winner's queue (not until the next pass: at once)."""
    world.add("prod")
    world.add("prod", "other")
    declare = world.broker.declare_queue
    raced: list[str] = []

    def first_the_winner(vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None:
        if not raced:  # other/prod planned its queue; default/prod's converge declares it first
            raced.append(name)
            world.broker.declare_queue = declare  # type: ignore[method-assign]
            world.converge("prod")
            world.broker.declare_queue = first_the_winner  # type: ignore[method-assign]
        declare(vhost, name, arguments, durable)

    world.broker.declare_queue = first_the_winner  # type: ignore[method-assign]
    world.converge("prod", "other")
    assert raced == ["matches.prod"]
    assert world.reason("prod", namespace="other") == "QueueClaimed"
    assert world.reason("prod") == "Converged"
    assert ("matchenv-env.c1.other.prod", "/") not in world.broker.permissions
    assert ("matchenv-env.c1.default.prod", "/") in world.broker.permissions


def test_the_second_team_gets_a_clear_refusal_and_nothing_of_the_first(world: World) -> None:
    world.add("prod", queue={"maxLength": 1000})  # with a policy, which the other team must not touch
    world.converge("prod")
    world.add("prod", "other", deletionPolicy="Delete")
    world.converge("prod", "other")
    assert world.status("prod", "other")["phase"] == "Degraded"
    assert world.reason("prod", namespace="other") == "QueueClaimed"
    assert "default/prod" in world.status("prod", "other")["lastError"]
    assert ("matchenv-env.c1.other.prod", "/") not in world.broker.permissions
    assert ("other", "prod-workers") not in world.kube.deployments  # no workers, not even a Deployment of 0
    # its deletion leaves prod's queue, dead-letter queue and policy alone
    world.delete("prod", "other")
    assert {("/", "matches.prod"), ("/", "matches.prod.dlq")} <= set(world.broker.queues)
    assert ("/", "matchenv.matches.prod") in world.broker.policies
    assert any(b.destination == "matches.prod" for b in world.broker.bindings)


@pytest.mark.parametrize(("spec", "setting"), [
    ({"queue": {"name": "orders"}}, "MATCHENV_QUEUE_PATTERN"),
    ({"exchange": {"name": "orders-events"}}, "MATCHENV_ALLOWED_EXCHANGES"),
    ({"broker": {"vhost": "billing"}}, "MATCHENV_ALLOWED_VHOSTS"),
    ({"queue": {"adopt": True}}, "MATCHENV_ADOPT_NAMESPACES"),
    ({"queue": {"maxLength": 10, "overflow": "reject-publish"}}, "MATCHENV_ALLOW_REJECT_PUBLISH"),
    ({"queue": {"maxLength": 10, "overflow": "reject-publish-dlx"}}, "MATCHENV_ALLOW_REJECT_PUBLISH"),
])
def test_the_administrators_bounds_name_the_setting(world: World, spec: dict[str, Any], setting: str) -> None:
    world.add("tenant", **spec)
    world.converge("tenant")
    assert world.reason("tenant") == "NotAllowed"
    assert setting in world.status("tenant")["lastError"]
    assert world.broker.calls == 0  # refused before any broker call


def test_the_administrator_consents_to_adoption_and_reject_publish(world: World) -> None:
    world.broker.declare_queue("/", "matches.legacy", {"x-queue-type": "classic"})  # hand-wired, with messages
    world.add("legacy", queue={"adopt": True})
    world.add("full", queue={"maxLength": 10, "overflow": "reject-publish"})
    world.reconciler.services.settings = world.settings.model_copy(update={"adopt_namespaces": ["default"],
                                                                  "allow_reject_publish": True})
    world.converge("legacy")
    world.converge("full")
    assert world.reason("legacy") == "Converged"
    assert world.reason("full") == "Converged"
    assert world.broker.permissions[("matchenv-env.c1.default.legacy", "/")].read == r"^matches\.legacy$"


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


def test_the_administrators_maximum_queue_length_is_one_operator_policy_and_status_says_when_it_drops(
        world: World) -> None:
    from dataclasses import replace

    world.reconciler.services.settings = world.settings.model_copy(update={"max_queue_length": 1000})
    # the previous version's, named by no cluster
    world.broker.put_operator_policy("/", "matchenv.max-length", "^matches\\.", {"max-length": 5}, 0)
    world.add("prod", paused=True)
    world.add("dev", queue={"maxLength": 50})
    world.converge("prod")
    world.converge("dev")
    cap = world.broker.operator_policies[("/", "matchenv.max-length.c1")]
    assert (cap.pattern, cap.definition, cap.apply_to) == (r"^matches\.", {"max-length": 1000}, "queues")
    # one per vhost and cluster, whatever the number of environments (the previous version's, unnamed by cluster, gone)
    assert len(world.broker.operator_policies) == 1
    assert ("/", "matchenv.matches.prod") not in world.broker.policies  # no policy per environment for it
    paused = [m for _, r, m in world.kube.events if r == "Paused"]
    assert paused == ["workers stopped; messages wait in queue matches.prod (at most 1000, then drop-head)"]
    world.broker.queues[("/", "matches.prod")] = replace(
        world.broker.queues[("/", "matches.prod")], messages=1000, messages_ready=1000)
    world.converge("prod")
    message = {c["type"]: c for c in world.status("prod")["conditions"]}["TopologyReady"]["message"]
    assert message.endswith("it holds 1000 messages, the operator's maximum queue length "
                            "(MATCHENV_MAX_QUEUE_LENGTH=1000): the oldest are dropped as new ones arrive")
    world.reconciler.services.settings = world.settings.model_copy(update={"max_queue_length": 0})
    world.reconciler.services.ensured.clear()  # a new process with the setting removed
    world.converge("prod")
    assert world.broker.operator_policies == {}


def _move(world: World, name: str, **spec: Any) -> None:
    env = world.kube.environments[("default", name)]
    for key, value in spec.items():
        env["spec"][key] = {**env["spec"].get(key, {}), **value}
    world.converge(name)


def test_a_renamed_queue_is_let_go_of_and_kept_under_retain(world: World) -> None:
    world.add("prod", queue={"name": "matches.prod", "maxLength": 100})
    world.converge("prod")
    assert world.status("prod")["placement"] == {"queue": "matches.prod", "vhost": "/",
                                                 "brokerSecret": "matchenv-system/matchenv-broker"}
    _move(world, "prod", queue={"name": "matches.prod2"})
    assert world.reason("prod") == "Converged"
    assert ("/", "matches.prod") in world.broker.queues  # Retain: kept with its messages...
    assert world.broker.snapshot().bindings_to("/", "matches.prod") == []  # ...but nothing routed to it any more
    assert [b.source for b in world.broker.snapshot().bindings_to("/", "matches.prod2")] == ["matches-fanout"]
    assert world.broker.permissions[("matchenv-env.c1.default.prod", "/")].read == r"^matches\.prod2$"
    assert world.status("prod")["placement"]["queue"] == "matches.prod2"
    released = [m for _, r, m in world.kube.events if r == "Released"]
    assert released == [
        "the old queue matches.prod in vhost /: unbound queue matches.prod from exchange matches-fanout (kept with "
        "its messages: deletionPolicy Retain)"]


def test_a_renamed_queue_is_deleted_under_delete_and_a_new_vhost_takes_the_old_permissions_back(
        world: World) -> None:
    world.settings.allowed_vhosts.append("team")
    world.add("prod", deletionPolicy="Delete")
    world.converge("prod")
    _move(world, "prod", queue={"name": "matches.prod2"})
    assert ("/", "matches.prod") not in world.broker.queues
    assert ("/", "matches.prod.dlq") not in world.broker.queues
    assert ("/", "matches.prod.dlx") not in world.broker.exchanges
    _move(world, "prod", broker={"vhost": "team"})
    assert ("matchenv-env.c1.default.prod", "/") not in world.broker.permissions
    assert world.broker.permissions[("matchenv-env.c1.default.prod", "team")].read == r"^matches\.prod2$"
    assert ("/", "matches.prod2") not in world.broker.queues
    assert world.status("prod")["placement"]["vhost"] == "team"


def test_a_move_to_another_broker_drops_the_user_on_the_old_one_and_waits_for_it_when_away(world: World) -> None:
    other = SimulatedBroker()
    world.clients.others["http://team-rabbitmq:15672"] = other
    world.kube.add_secret("default", "team-broker", {**ADMIN, "management-url": "http://team-rabbitmq:15672"})
    world.add("prod")
    world.converge("prod")
    world.broker.down = True  # the old broker away: the move goes on, the old place is remembered
    _move(world, "prod", broker={"connectionSecretRef": {"name": "team-broker"}})
    assert ("/", "matches.prod") in other.queues
    assert world.status("prod")["placement"]["brokerSecret"] == "matchenv-system/matchenv-broker"
    assert [r for _, r, _ in world.kube.events].count("ReleaseIncomplete") == 1
    world.broker.down = False
    world.converge("prod")
    assert "matchenv-env.c1.default.prod" not in world.broker.users
    assert world.broker.snapshot().bindings_to("/", "matches.prod") == []
    assert world.status("prod")["placement"]["brokerSecret"] == "default/team-broker"


def test_a_move_away_from_a_refused_queue_touches_nothing_of_its_owner(world: World) -> None:
    world.add("owner", queue={"name": "matches.shared"})
    world.converge("owner")
    world.add("thief", queue={"name": "matches.shared"})
    world.converge("thief")
    assert world.reason("thief") == "QueueClaimed"
    assert "placement" not in world.status("thief")
    _move(world, "thief", queue={"name": "matches.thief"})
    assert [b.source for b in world.broker.snapshot().bindings_to("/", "matches.shared")] == ["matches-fanout"]


def test_another_secret_for_the_same_broker_is_the_same_place(world: World) -> None:
    world.kube.add_secret("default", "same-broker", ADMIN)
    world.add("prod", deletionPolicy="Delete")
    world.converge("prod")
    _move(world, "prod", broker={"connectionSecretRef": {"name": "same-broker"}})
    assert [b.source for b in world.broker.snapshot().bindings_to("/", "matches.prod")] == ["matches-fanout"]
    assert "matchenv-env.c1.default.prod" in world.broker.users
    assert world.status("prod")["placement"]["brokerSecret"] == "default/same-broker"
    assert not [r for _, r, _ in world.kube.events if r in ("Released", "ReleaseIncomplete")]


@pytest.mark.parametrize(("hosts", "allowed"), [(None, True), ([], False), (["rabbitmq.team-*.svc"], False),
                                                 (["team-rabbitmq"], True)])
def test_the_administrator_decides_which_tenant_brokers_the_operator_calls(
        world: World, hosts: list[str] | None, allowed: bool) -> None:
    other = SimulatedBroker()
    world.clients.others["http://team-rabbitmq:15672"] = other
    world.kube.add_secret("default", "team-broker", {**ADMIN, "url": "amqp://team-rabbitmq:5672",
                                                     "management-url": "http://team-rabbitmq:15672"})
    world.reconciler.services.settings = world.settings.model_copy(update={"tenant_broker_hosts": hosts})
    world.add("tenant", broker={"connectionSecretRef": {"name": "team-broker"}})
    world.converge("tenant")
    if allowed:
        assert world.reason("tenant") == "Converged"
        return
    assert world.reason("tenant") == "NotAllowed"
    assert "MATCHENV_TENANT_BROKER_HOSTS" in world.status("tenant")["lastError"]
    assert other.calls == 0  # not one call to what the tenant's Secret names
    with pytest.raises(TeardownIncomplete, match="abandon-broker"):
        world.reconciler.teardown(world.kube.environment("default", "tenant"))
    assert other.calls == 0


def test_every_node_of_a_tenant_cluster_must_be_an_allowed_host(world: World) -> None:
    other = SimulatedBroker()
    nodes = "http://team-rabbitmq-0:15672;http://rabbitmq.elsewhere:15672"
    world.clients.others[nodes] = other
    world.kube.add_secret("default", "team-broker", {**ADMIN, "url": "amqp://team-rabbitmq-0:5672",
                                                     "management-url": nodes})
    world.reconciler.services.settings = world.settings.model_copy(update={"tenant_broker_hosts": ["team-*"]})
    world.add("tenant", broker={"connectionSecretRef": {"name": "team-broker"}})
    world.converge("tenant")
    assert world.reason("tenant") == "NotAllowed"
    assert "rabbitmq.elsewhere" in world.status("tenant")["lastError"]
    assert other.calls == 0


def test_a_queue_pattern_with_the_namespace_ties_queue_names_to_namespaces(world: World) -> None:
    world.reconciler.services.settings = world.settings.model_copy(update={"queue_pattern": r"^matches\.{namespace}\."})
    world.add("prod", namespace="team-a", queue={"name": "matches.team-a.prod"})
    world.add("prod", namespace="team-b", queue={"name": "matches.team-a.prod2"})  # team-a's names: refused
    world.converge("prod", namespace="team-a")
    world.converge("prod", namespace="team-b")
    assert world.reason("prod", namespace="team-a") == "Converged"
    assert world.reason("prod", namespace="team-b") == "NotAllowed"
    assert r"'^matches\\.team\\-b\\.'" in world.status("prod", namespace="team-b")["lastError"]


def test_an_out_of_bounds_environment_is_refused_before_any_read(world: World) -> None:
    from matchenv.operator.steps.topology import converge_topology

    world.add("rogue", queue={"name": "orders.main"})
    calls = world.broker.calls
    outcome = converge_topology(world.services, world.context("rogue"))
    assert outcome.refused
    assert outcome.refusal is not None
    assert outcome.refusal.reason == "NotAllowed"
    assert "orders.main" in outcome.refusal.message
    assert world.broker.calls == calls
    assert ("default", "rogue-broker") not in world.kube.secrets  # no credentials for what it may not have


def test_a_broker_that_cannot_be_reached_is_an_outcome_not_an_exception(world: World) -> None:
    from matchenv.operator.steps.topology import converge_topology

    world.add("prod")
    world.broker.down = True
    outcome = converge_topology(world.services, world.context("prod"))
    assert (outcome.error_reason, outcome.observation) == ("BrokerUnreachable", None)
    assert [e[1] for e in world.kube.events] == ["BrokerUnreachable"]


WORKERS = {"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "matchenv-db-prod"}}


def _secret(world: World, name: str) -> dict[str, str]:
    secret = world.kube.secrets[("default", name)]
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()} or dict(
        secret.get("stringData") or {})


def test_task_events_give_flower_a_secret_and_a_user_of_its_own_and_turned_off_take_both_away(world: World) -> None:
    world.add("prod", workers={**WORKERS, "taskEvents": True})
    world.converge("prod")
    assert world.reason("prod") == "Converged"
    assert world.status("prod")["eventsSecret"] == "prod-events"
    data = _secret(world, "prod-events")
    assert data["username"] == "matchenv-events.c1.default.prod"
    assert data["events-exchange"] == "matches.prod.events"
    assert data["url"].startswith("amqp://matchenv-events.c1.default.prod:")
    assert world.broker.users["matchenv-events.c1.default.prod"].has_password(data["password"])
    env = {e["name"]: e.get("value") for e in
           world.kube.deployments[("default", "prod-workers")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MATCHENV_TASK_EVENTS"] == "true"
    writes = dict(world.kube.writes)
    world.converge("prod")
    assert dict(world.kube.writes) == writes  # nothing more to write
    world.kube.environments[("default", "prod")]["spec"]["workers"]["taskEvents"] = False
    world.converge("prod")
    assert "eventsSecret" not in world.status("prod")
    assert ("default", "prod-events") not in world.kube.secrets
    assert "matchenv-events.c1.default.prod" not in world.broker.users
    assert ("/", "matches.prod.events") not in world.broker.exchanges
    env = {e["name"] for e in
           world.kube.deployments[("default", "prod-workers")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MATCHENV_TASK_EVENTS" not in env


def test_an_events_secret_someone_else_made_is_left_alone_and_said(world: World) -> None:
    world.kube.add_secret("default", "prod-events", {"url": "amqp://theirs"})
    world.add("prod", workers={**WORKERS, "taskEvents": True})
    world.converge("prod")
    assert "Secret prod-events exists and is not this environment's" in world.status("prod")["lastError"]
    assert world.reason("prod") == "SecretNotOwned"
    assert "matchenv-events.c1.default.prod" not in world.broker.users
    assert "ownerReferences" not in world.kube.secrets[("default", "prod-events")]["metadata"]
    assert ("/", "matches.prod") in world.broker.queues  # the rest goes on

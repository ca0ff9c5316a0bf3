"""The pure topology planner: what it plans for each spec field, and that a second plan after applying is empty."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from matchenv.api import MatchEnvironmentSpec
from matchenv.naming import broker_regex
from matchenv.topology.applier import apply_plan
from matchenv.topology.desired import DesiredTopology, desired_topology
from matchenv.topology.planner import (
    Bind,
    BindExchange,
    ClearPermissions,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    DeletePolicy,
    DeleteQueue,
    DeleteUser,
    Plan,
    PutPolicy,
    PutUser,
    SetPermissions,
    Unbind,
    check_ownership,
    observe,
    plan_converge,
    plan_detach,
    plan_remove,
)
from matchenv.topology.snapshot import Binding, BrokerSnapshot, Queue
from tests.cases import CLUSTER, environment
from tests.fakes import SimulatedBroker


def desired(name: str = "staging", namespace: str = "default", cluster: str = CLUSTER, **spec: Any
            ) -> DesiredTopology:
    return desired_topology(cluster, namespace, name,
                            MatchEnvironmentSpec.model_validate(environment(name, **spec)["spec"]))


def converge(broker: SimulatedBroker, want: DesiredTopology, password: str = "secret-pw") -> Plan:
    plan = plan_converge(want, broker.snapshot(want.scope()), password)
    apply_plan(broker, plan)
    return plan


def assert_converged(broker: SimulatedBroker, want: DesiredTopology) -> None:
    again = plan_converge(want, broker.snapshot(want.scope()), "secret-pw")
    assert again == Plan(), f"second plan not empty: {again}"


OWNER = f"{CLUSTER}/default/staging"


def test_fresh_broker_gets_the_whole_topology() -> None:
    broker = SimulatedBroker()
    plan = converge(broker, desired())
    assert plan.problems == ()
    assert plan.actions == (
        DeclareExchange("/", "matches-fanout", "fanout"),
        DeclareQueue("/", "matches.staging", "classic", OWNER),
        DeclareQueue("/", "matches.staging.dlq", "classic", OWNER),
        DeclareExchange("/", "matches.staging.dlx", "fanout", OWNER),
        Bind("/", "matches.staging.dlx", "matches.staging.dlq"),
        Bind("/", "matches-fanout", "matches.staging", ""),
        PutUser("/", "matchenv-env.c1.default.staging", "secret-pw"),
        SetPermissions("/", "matchenv-env.c1.default.staging", r"^matches\.staging$", r"^matches\.staging\.dlx$",
                       r"^matches\.staging$"),
    )
    assert_converged(broker, desired())
    assert broker.policies == {}  # nothing for the broker to enforce: no policy (each costs O(queues x policies))


def test_existing_shared_exchange_is_reused_not_redeclared() -> None:
    broker = SimulatedBroker()
    broker.declare_exchange("/", "matches-fanout", "fanout")
    plan = converge(broker, desired())
    assert not any(isinstance(a, DeclareExchange) and a.name == "matches-fanout" for a in plan.actions)


def test_max_length_and_ttl_go_into_the_policy() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    want = desired(queue={"maxLength": 500, "messageTTLSeconds": 60})
    plan = converge(broker, want)
    assert plan.actions == (
        PutPolicy("/", "matchenv.matches.staging", r"^matches\.staging$",
                  {"max-length": 500, "message-ttl": 60_000, "dead-letter-exchange": "matches.staging.dlx"}, 100),
    )
    assert_converged(broker, want)


def test_without_dead_letter_there_is_no_dlx_and_no_write_permission() -> None:
    broker = SimulatedBroker()
    want = desired(queue={"deadLetter": False})
    plan = converge(broker, want)
    kinds = {type(a) for a in plan.actions}
    assert PutPolicy not in kinds
    assert [a.name for a in plan.actions if isinstance(a, DeclareQueue)] == ["matches.staging"]
    perms = next(a for a in plan.actions if isinstance(a, SetPermissions))
    assert perms.write == ""
    assert_converged(broker, want)


def test_turning_dead_letter_off_drops_it_from_the_policy_but_keeps_the_dlq() -> None:
    broker = SimulatedBroker()
    converge(broker, desired(queue={"maxLength": 10}))
    plan = converge(broker, desired(queue={"deadLetter": False, "maxLength": 10}))
    assert PutPolicy("/", "matchenv.matches.staging", r"^matches\.staging$", {"max-length": 10}, 100) in plan.actions
    assert not any(isinstance(a, DeleteQueue) for a in plan.actions)
    assert ("/", "matches.staging.dlq") in broker.queues


def test_a_policy_an_earlier_version_left_on_an_environment_without_limits_is_removed() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    broker.put_policy("/", "matchenv.matches.staging", r"^matches\.staging$",
                      {"dead-letter-exchange": "matches.staging.dlx"}, 100)
    plan = converge(broker, desired())
    assert plan.actions == (DeletePolicy("/", "matchenv.matches.staging"),)


def test_quorum_queue_and_its_dlq_are_quorum() -> None:
    broker = SimulatedBroker()
    want = desired(queue={"type": "quorum"})
    plan = converge(broker, want)
    assert DeclareQueue("/", "matches.staging", "quorum", OWNER) in plan.actions
    assert DeclareQueue("/", "matches.staging.dlq", "quorum", OWNER) in plan.actions
    assert want.queue.arguments == {"x-queue-type": "quorum", "x-matchenv-owner": OWNER}
    policy = next(a for a in plan.actions if isinstance(a, PutPolicy))
    assert policy.definition["delivery-limit"] == 20  # a message that keeps killing workers ends in the DLQ


def test_queue_of_another_type_is_a_problem_not_an_action() -> None:
    broker = SimulatedBroker()
    broker.declare_queue("/", "matches.staging", {"x-queue-type": "classic", "x-matchenv-owner": OWNER})
    plan = plan_converge(desired(queue={"type": "quorum"}), broker.snapshot(), "pw")
    assert any("exists as a classic queue" in p for p in plan.problems)
    assert not any(isinstance(a, DeclareQueue) and a.name == "matches.staging" for a in plan.actions)


def test_exchange_of_another_type_is_a_problem() -> None:
    broker = SimulatedBroker()
    broker.declare_exchange("/", "matches-fanout", "direct")
    plan = plan_converge(desired(), broker.snapshot(), "pw")
    assert plan.problems == ("exchange matches-fanout is a direct exchange, spec.exchange.type is fanout",)


def test_topic_exchange_binds_once_per_routing_key_and_follows_key_changes() -> None:
    broker = SimulatedBroker()
    topic = {"exchange": {"name": "matches-topic", "type": "topic"}}
    want = desired(queue={"routingKeys": ["U14.#", "U15.#"]}, **topic)
    plan = converge(broker, want)
    binds = [a for a in plan.actions if isinstance(a, Bind) and a.exchange == "matches-topic"]
    assert [(b.routing_key) for b in binds] == ["U14.#", "U15.#"]
    assert DeclareExchange("/", "matches-topic", "topic") in plan.actions
    assert_converged(broker, want)
    changed = desired(queue={"routingKeys": ["U15.#", "U16.#"]}, **topic)
    plan = converge(broker, changed)
    assert set(plan.actions) == {Bind("/", "matches-topic", "matches.staging", "U16.#"),
                                 Unbind("/", "matches-topic", "matches.staging", "U14.#")}
    assert_converged(broker, changed)


def test_routing_keys_on_the_fanout_bind_through_one_shared_topic_exchange() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())  # a fanout environment first: it keeps its direct binding
    subset = desired(name="u14", queue={"routingKeys": ["U14.#"]})
    plan = converge(broker, subset)
    assert DeclareExchange("/", "matches-fanout.topic", "topic") in plan.actions
    assert BindExchange("/", "matches-fanout", "matches-fanout.topic") in plan.actions
    assert Bind("/", "matches-fanout.topic", "matches.u14", "U14.#") in plan.actions
    assert not any(isinstance(a, Bind) and a.exchange == "matches-fanout" and a.queue == "matches.u14"
                   for a in plan.actions)
    assert_converged(broker, subset)
    assert observe(subset, broker.snapshot(subset.scope())).bound
    # a second subset shares the exchange and its binding to the fanout
    other = desired(name="u15", queue={"routingKeys": ["U15.#"]})
    plan = converge(broker, other)
    assert not any(isinstance(a, BindExchange) or (isinstance(a, DeclareExchange) and a.name.endswith(".topic"))
                   for a in plan.actions)
    assert Bind("/", "matches-fanout.topic", "matches.u15", "U15.#") in plan.actions
    # the exchange-to-exchange binding deleted by hand is put back (and status says unbound until then)
    broker.bindings = [b for b in broker.bindings if b.destination_type != "exchange"]
    assert not observe(subset, broker.snapshot(subset.scope())).bound
    assert converge(broker, subset).actions == (BindExchange("/", "matches-fanout", "matches-fanout.topic"),)
    # dropping the keys moves the queue back to the fanout, bind first
    plan = converge(broker, desired(name="u14"))
    assert plan.actions == (Bind("/", "matches-fanout", "matches.u14", ""),
                            Unbind("/", "matches-fanout.topic", "matches.u14", "U14.#"))
    assert (("/", "matches-fanout.topic")) in broker.exchanges  # shared: never deleted by one environment


def test_a_subset_exchange_of_another_type_is_a_problem() -> None:
    broker = SimulatedBroker()
    broker.declare_exchange("/", "matches-fanout.topic", "direct")
    plan = plan_converge(desired(queue={"routingKeys": ["U14.#"]}), broker.snapshot(), "pw")
    assert any("matches-fanout.topic is a direct exchange" in p for p in plan.problems)


def test_exchange_rename_moves_the_binding_whatever_status_said() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    want = desired(exchange={"name": "matches-v2"})
    plan = converge(broker, want)
    assert Bind("/", "matches-v2", "matches.staging", "") in plan.actions
    assert Unbind("/", "matches-fanout", "matches.staging", "~") in plan.actions
    assert_converged(broker, want)


def test_bindings_the_spec_does_not_ask_for_are_removed() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    broker.declare_exchange("/", "amq.topic", "topic")
    broker.bind_queue("/", "amq.topic", "matches.staging", "#")
    plan = converge(broker, desired())
    assert plan.actions == (Unbind("/", "amq.topic", "matches.staging", "#"),)
    assert_converged(broker, desired())


def test_deleted_binding_queue_and_policy_are_put_back() -> None:
    broker = SimulatedBroker()
    want = desired(queue={"maxLength": 10})
    converge(broker, want)
    broker.unbind_queue("/", "matches-fanout", "matches.staging", "~")
    broker.delete_policy("/", "matchenv.matches.staging")
    del broker.queues[("/", "matches.staging")]
    plan = converge(broker, want)
    assert {type(a) for a in plan.actions} == {DeclareQueue, PutPolicy, Bind}
    assert_converged(broker, want)


def test_hand_edited_policy_and_permissions_are_repaired() -> None:
    broker = SimulatedBroker()
    want = desired(queue={"maxLength": 10})
    converge(broker, want)
    broker.put_policy("/", "matchenv.matches.staging", ".*", {"max-length": 1}, 0)
    broker.set_permissions("/", "matchenv-env.c1.default.staging", ".*", ".*", ".*")
    plan = converge(broker, want)
    assert {type(a) for a in plan.actions} == {PutPolicy, SetPermissions}


def test_user_password_follows_the_secret() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    assert not any(isinstance(a, PutUser) for a in plan_converge(desired(), broker.snapshot(), "secret-pw").actions)
    other = plan_converge(desired(), broker.snapshot(), "new")  # the broker's hash does not match: set it
    assert PutUser("/", "matchenv-env.c1.default.staging", "new", exists=True) in other.actions
    apply_plan(broker, other)
    assert broker.users["matchenv-env.c1.default.staging"].has_password("new") is True
    assert broker.users["matchenv-env.c1.default.staging"].has_password("secret-pw") is False


def test_vhost_and_queue_name_come_from_the_spec() -> None:
    want = desired(broker={"vhost": "matches"}, queue={"name": "feed.custom"})
    plan = plan_converge(want, BrokerSnapshot.empty(), "pw")
    assert {a.vhost for a in plan.actions} == {"matches"}
    assert DeclareQueue("matches", "feed.custom", "classic", OWNER) in plan.actions
    assert want.names.dead_letter_queue == "feed.custom.dlq"


def test_user_name_includes_the_namespace() -> None:
    assert desired(namespace="team-a").names.broker_user == "matchenv-env.c1.team-a.staging"


@pytest.mark.parametrize("delete_queue", [False, True])
def test_teardown_unbinds_first_then_drops_the_user_and_per_policy_the_queue(delete_queue: bool) -> None:
    broker = SimulatedBroker()
    want = desired(queue={"maxLength": 10})
    converge(broker, want)
    detach = plan_detach(want, broker.snapshot())
    assert detach.actions == (Unbind("/", "matches-fanout", "matches.staging", "~"),)
    apply_plan(broker, detach)
    plan = plan_remove(want, broker.snapshot(), delete_queue=delete_queue)
    assert plan.actions[0] == DeleteUser("/", "matchenv-env.c1.default.staging")
    deleted = {a.name for a in plan.actions if isinstance(a, DeleteQueue)}
    assert deleted == ({"matches.staging", "matches.staging.dlq"} if delete_queue else set())
    assert (DeleteExchange("/", "matches.staging.dlx") in plan.actions) is delete_queue
    assert (DeletePolicy("/", "matchenv.matches.staging") in plan.actions) is delete_queue
    apply_plan(broker, plan)
    assert plan_remove(want, broker.snapshot(), delete_queue=delete_queue) == Plan()
    assert broker.exchanges[("/", "matches-fanout")]  # the shared exchange is never deleted


# -- ownership ---------------------------------------------------------------------------------------------------

def test_a_queue_of_another_namespace_is_claimed_not_shared() -> None:
    broker = SimulatedBroker()
    prod = desired("prod", "default", queue={"type": "quorum", "maxLength": 100})
    converge(broker, prod)
    other = desired("prod", "other", queue={"type": "quorum", "maxLength": 1}, deletionPolicy="Delete")
    plan = plan_converge(other, broker.snapshot(), "pw")
    assert plan.actions == ()
    assert plan.refusal is not None
    assert plan.refusal.reason == "QueueClaimed"
    assert "default/prod" in plan.refusal.message
    # its deletion touches nothing of prod's: only its own user, if it had one
    assert plan_detach(other, broker.snapshot()).actions == ()
    assert plan_remove(other, broker.snapshot(), delete_queue=True).actions == ()
    assert_converged_as(broker, prod)


def test_two_clusters_environments_of_one_name_never_meet_on_one_broker() -> None:
    """Cluster c2's default/prod is not cluster c1's: refused on c1's queue (naming the cluster), never touching c1's
    user; on a queue of its own it converges beside it, with a user of its own."""
    broker = SimulatedBroker()
    prod = desired("prod")
    converge(broker, prod)
    other = desired("prod", cluster="c2")
    plan = converge(broker, other, password="c2-pw")
    assert plan.refusal is not None
    assert plan.refusal.reason == "QueueClaimed"
    assert plan.refusal.message == \
        "queue matches.prod (vhost /) belongs to MatchEnvironment default/prod of cluster c1"
    assert plan.actions == ()
    assert set(broker.users) == {"matchenv-env.c1.default.prod"}
    beside = desired("prod", cluster="c2", queue={"name": "matches.prod-c2"})
    converge(broker, beside)
    assert_converged(broker, beside)
    assert_converged_as(broker, prod)  # c1's user keeps its password and rights
    assert broker.queues[("/", "matches.prod-c2")].owner == "c2/default/prod"
    assert set(broker.users) == {"matchenv-env.c1.default.prod", "matchenv-env.c2.default.prod"}


def _made_before_cluster_identity(broker: SimulatedBroker, name: str = "prod", queue: str = "matches.prod") -> None:
    """What versions before the cluster identity made for default/<name>: legacy markers and user names."""
    legacy = f"default/{name}"
    broker.declare_queue("/", queue, {"x-queue-type": "classic", "x-matchenv-owner": legacy})
    broker.declare_queue("/", f"{queue}.dlq", {"x-queue-type": "classic", "x-matchenv-owner": legacy})
    broker.declare_exchange("/", "matches-fanout", "fanout")
    broker.declare_exchange("/", f"{queue}.dlx", "fanout", arguments={"x-matchenv-owner": legacy})
    broker.bind_queue("/", "matches-fanout", queue)
    broker.bind_queue("/", f"{queue}.dlx", f"{queue}.dlq")
    broker.put_user(f"matchenv.default.{name}", "old-pw")
    broker.set_permissions("/", f"matchenv.default.{name}", broker_regex(queue), broker_regex(f"{queue}.dlx"),
                           broker_regex(queue))


def test_what_the_previous_version_made_is_adopted_by_the_first_cluster_to_upgrade() -> None:
    broker = SimulatedBroker()
    _made_before_cluster_identity(broker)
    prod = desired("prod")
    plan = converge(broker, prod)
    assert plan.refusal is None
    assert not [a for a in plan.actions if isinstance(a, DeclareQueue)]  # the queue and its messages stay
    assert DeleteUser("/", "matchenv.default.prod") in plan.actions  # after the new user has its rights
    assert set(broker.users) == {"matchenv-env.c1.default.prod"}
    assert_converged(broker, prod)
    # the claim is the new user's read right: another cluster's default/prod is refused, naming c1
    refusal = check_ownership(desired("prod", cluster="c2"), broker.snapshot())
    assert refusal is not None
    assert refusal.reason == "QueueClaimed"
    assert "default/prod of cluster c1" in refusal.message
    # and the environment's teardown removes the legacy dead-letter exchange it now owns
    removal = plan_remove(prod, broker.snapshot(prod.scope()), delete_queue=True)
    assert DeleteExchange("/", "matches.prod.dlx") in removal.actions


def test_a_legacy_user_of_the_same_name_on_another_queue_is_left_alone() -> None:
    """Another cluster's environment of the same name, still on the previous version, uses the same legacy user
    name on its own queue: it is not this environment's to delete."""
    broker = SimulatedBroker()
    _made_before_cluster_identity(broker, queue="matches.prod-elsewhere")
    broker.declare_queue("/", "matches.prod", {"x-queue-type": "classic", "x-matchenv-owner": "default/prod"})
    plan = converge(broker, desired("prod"))
    assert plan.refusal is None
    assert "matchenv.default.prod" in broker.users


def assert_converged_as(broker: SimulatedBroker, want: DesiredTopology) -> None:
    assert plan_converge(want, broker.snapshot(), "secret-pw") == Plan()


def test_a_refused_environment_loses_any_permission_it_holds() -> None:
    broker = SimulatedBroker()
    converge(broker, desired("prod"))
    broker.set_permissions("/", "matchenv-env.c1.other.prod", r"^matches\.prod$", "", r"^matches\.prod$")
    plan = plan_converge(desired("prod", "other"), broker.snapshot(), "pw")
    assert plan.actions == (ClearPermissions("/", "matchenv-env.c1.other.prod"),)


def test_an_environment_named_like_a_dead_letter_queue_cannot_take_it() -> None:
    broker = SimulatedBroker()
    converge(broker, desired("prod"))
    refusal = check_ownership(desired("prod.dlq"), broker.snapshot())
    assert refusal is not None
    assert refusal.reason == "NameReserved"
    assert "matches.prod.dlq ends with .dlq" in refusal.message
    for name in ("prod.dlx", "prod.backfill", "x.topic", "x.archive"):  # a metadata.name with dots: the default
        plan = converge(broker, desired(name))
        assert plan.refusal is not None
        assert plan.refusal.reason == "NameReserved"
        assert not [a for a in plan.actions if not isinstance(a, ClearPermissions)]


def test_a_queue_named_like_an_exchange_is_refused() -> None:
    """Permissions are regexes over queues and exchanges alike: configure on ^matches-feed$ could delete the
    exchange of that name."""
    broker = SimulatedBroker()
    converge(broker, desired("prod", exchange={"name": "matches.feed"}))
    plan = converge(broker, desired("thief", queue={"name": "matches.feed"}))
    assert plan.refusal is not None
    assert plan.refusal.reason == "NameReserved"
    assert "exchange matches.feed exists in vhost /" in plan.refusal.message
    assert "matchenv-env.c1.default.thief" not in broker.users


def test_a_hand_made_queue_is_refused_unless_adopted() -> None:
    broker = SimulatedBroker()
    broker.declare_queue("/", "matches.legacy", {"x-queue-type": "classic"})
    refusal = check_ownership(desired("legacy"), broker.snapshot())
    assert refusal is not None
    assert refusal.reason == "QueueExists"
    assert "adopt" in refusal.message
    adopted = desired("legacy", queue={"adopt": True})
    plan = converge(broker, adopted)
    assert not any(isinstance(a, DeclareQueue) and a.name == "matches.legacy" for a in plan.actions)
    assert_converged_as(broker, adopted)
    # the adoption is a claim (its user reads the queue): a second adopter elsewhere is refused
    second = check_ownership(desired("legacy", "other", queue={"adopt": True}), broker.snapshot())
    assert second is not None
    assert second.reason == "QueueClaimed"
    assert "default/legacy" in second.message


def test_a_retained_queue_goes_back_to_its_owner_only() -> None:
    broker = SimulatedBroker()
    want = desired()
    converge(broker, want)
    apply_plan(broker, plan_detach(want, broker.snapshot()))
    apply_plan(broker, plan_remove(want, broker.snapshot(), delete_queue=False))
    assert check_ownership(want, broker.snapshot()) is None  # the same namespace/name takes it up again
    assert check_ownership(desired(namespace="other"), broker.snapshot()) is not None


def test_two_declarations_at_once_are_decided_by_the_marker_the_broker_kept() -> None:
    broker = SimulatedBroker()
    first, second = desired("prod"), desired("prod", "other")
    plan_first = plan_converge(first, broker.snapshot(), "a")
    plan_second = plan_converge(second, broker.snapshot(), "b")  # planned before the first was applied
    apply_plan(broker, plan_first)
    apply_plan(broker, plan_second)
    assert check_ownership(first, broker.snapshot()) is None
    refusal = check_ownership(second, broker.snapshot())
    assert refusal is not None
    assert refusal.reason == "QueueClaimed"


def test_observe_counts_ready_and_unacked_and_the_dlq() -> None:
    want = desired()
    snapshot = BrokerSnapshot.build(
        queues=[Queue("/", "matches.staging", messages_ready=3, messages_unacknowledged=2, consumers=4,
                      arguments={"x-matchenv-owner": OWNER}),
                Queue("/", "matches.staging.dlq", messages_ready=1)],
        exchanges=[], bindings=[Binding("/", "matches-fanout", "matches.staging", "queue", "", "~")],
        policies=[], users=[], permissions=[],
    )
    seen = observe(want, snapshot)
    assert (seen.exists, seen.messages, seen.consumers, seen.dead_letter_messages, seen.bound) == (True, 5, 4, 1, True)
    assert observe(want, BrokerSnapshot.empty()).exists is False
    assert observe(want, replace(snapshot, bindings=())).bound is False


def test_counts_the_broker_does_not_report_are_unknown_not_zero() -> None:
    row = {"vhost": "/", "name": "matches.staging", "type": "classic", "arguments": {}}
    queue = Queue.from_api(row)
    assert (queue.messages_ready, queue.backlog, queue.consumers) == (None, None, None)
    snapshot = BrokerSnapshot.build([queue], [], [], [], [], [])
    assert observe(desired(), snapshot).messages is None


def test_broker_regex_escapes_dots_and_anchors() -> None:
    assert broker_regex("matches.prod") == r"^matches\.prod$"
    assert broker_regex("a:b-c") == "^a:b-c$"


def test_a_removed_backfill_deletes_only_its_own_exchange() -> None:
    broker = SimulatedBroker()
    converge(broker, desired())
    broker.declare_exchange("/", "matches.staging.backfill", "fanout")  # someone's, without the marker
    leftover = replace(desired(), backfill_leftover=True)
    plan = plan_converge(leftover, broker.snapshot(leftover.scope()), "secret-pw")
    assert not any(isinstance(a, DeleteExchange) for a in plan.actions)


def test_the_archive_follows_its_exchange_while_anything_else_is_bound_to_it() -> None:
    """The broker's bindings decide, whoever made them: another cluster's queue, or ours through another Secret."""
    from matchenv.topology.desired import desired_archive
    from matchenv.topology.planner import plan_archive, plan_archive_detach

    broker = SimulatedBroker()
    archive = desired_archive("/", "matches-fanout", "fanout", "30D", 10_000_000, 1_000_000)
    converge(broker, desired("prod"))
    subset = desired("u14", queue={"routingKeys": ["U14.#"]})
    converge(broker, subset)
    apply_plan(broker, plan_archive(archive, broker.snapshot(archive.scope())))

    def release() -> Plan:
        return plan_archive_detach(archive, broker.snapshot(archive.release_scope()))

    assert release() == Plan()  # prod is bound
    apply_plan(broker, plan_detach(desired("prod"), broker.snapshot()))
    assert release() == Plan()  # u14 still takes a subset through matches-fanout.topic
    apply_plan(broker, plan_detach(subset, broker.snapshot()))
    assert [a.describe() for a in release().actions] == [
        "unbound queue matches-fanout.archive from exchange matches-fanout"]


def test_a_removal_of_what_is_gone_already_is_done_and_other_actions_still_fail() -> None:
    """Two teardowns (or a person) may remove the same thing: the second removal is done, not an error that holds a
    deletion; a declaration that cannot be made still stops the plan."""
    from matchenv.topology.applier import ApplyError
    from matchenv.topology.client import BrokerNotFound

    class Gone(SimulatedBroker):
        def delete_user(self, name: str) -> None:
            raise BrokerNotFound(f"DELETE /api/users/{name}: 404", "DELETE /api/users", 404)

        def unbind_queue(self, vhost: str, exchange: str, queue: str, properties_key: str) -> None:
            raise BrokerNotFound("DELETE /api/bindings: 404", "DELETE /api/bindings", 404)

    broker = Gone()
    done = apply_plan(broker, Plan((Unbind("/", "matches-fanout", "matches.x", "~"), DeleteUser("/", "u"))))
    assert done == ["unbound queue matches.x from exchange matches-fanout (gone already)",
                    "deleted broker user u (gone already)"]
    with pytest.raises(ApplyError):
        apply_plan(broker, Plan((Bind("/", "no-such-exchange", "matches.x", ""),)))


WORKERS = {"image": "matchenv:0.1.0", "databaseSecretRef": {"name": "db"}}


def test_task_events_add_their_exchange_and_a_user_that_only_reads_them() -> None:
    broker = SimulatedBroker()
    want = desired(workers={**WORKERS, "taskEvents": True})
    plan = plan_converge(want, broker.snapshot(want.scope()), "secret-pw", events_password="flower-pw")
    apply_plan(broker, plan)
    events = broker.exchanges[("/", "matches.staging.events")]
    assert (events.type, events.owner) == ("topic", OWNER)
    worker = broker.permissions[(want.names.broker_user, "/")]
    assert worker.configure == r"^matches\.staging$|^matches\.staging\.events$"
    assert worker.write == r"^matches\.staging\.dlx$|^matches\.staging\.events$"
    assert worker.read == r"^matches\.staging$"  # the worker reads no event
    flower = broker.permissions[(want.names.events_user, "/")]
    uuid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    for name, rights in {"matches.staging.events": "cr", f"matches.staging.events.{uuid}": "cwr",
                         "matches.staging.events.pidbox": "cwr", "reply.matches.staging.events.pidbox": "cwr",
                         f"{uuid}.reply.matches.staging.events.pidbox": "cwr", "matches.staging": "",
                         "matches.staging.dlq": "", "matches-fanout": "", "celery.pidbox": "", "celeryev": "",
                         "matches.staging.events.x": "", "matches.other.events": ""}.items():
        held = "".join(k for k, pattern in (("c", flower.configure), ("w", flower.write), ("r", flower.read))
                       if re.fullmatch(pattern.replace("^", "").replace("$", ""), name))
        assert held == rights, f"{name}: {held!r}, want {rights!r}"
    again = plan_converge(want, broker.snapshot(want.scope()), "secret-pw", events_password="flower-pw")
    assert again == Plan()


def test_task_events_turned_off_take_their_user_and_own_exchange_away() -> None:
    broker = SimulatedBroker()
    on = desired(workers={**WORKERS, "taskEvents": True})
    apply_plan(broker, plan_converge(on, broker.snapshot(on.scope()), "secret-pw", events_password="flower-pw"))
    off = desired_topology(CLUSTER, "default", "staging", MatchEnvironmentSpec.model_validate(
        environment("staging")["spec"]), events_were_on=True)
    apply_plan(broker, plan_converge(off, broker.snapshot(off.scope()), "secret-pw"))
    assert on.names.events_user not in broker.users
    assert ("/", "matches.staging.events") not in broker.exchanges
    assert broker.permissions[(on.names.broker_user, "/")].configure == r"^matches\.staging$"
    assert_converged(broker, off)


def test_an_events_exchange_someone_else_made_is_a_problem_and_never_deleted() -> None:
    broker = SimulatedBroker()
    broker.declare_exchange("/", "matches.staging.events", "topic")  # no marker: not this environment's
    want = desired(workers={**WORKERS, "taskEvents": True})
    plan = plan_converge(want, broker.snapshot(want.scope()), "secret-pw", events_password="flower-pw")
    assert any("matches.staging.events exists" in p for p in plan.problems)
    leftover = replace(desired(), events_leftover=True)
    removal = plan_remove(leftover, broker.snapshot(leftover.scope()), delete_queue=True)
    assert not any(isinstance(a, DeleteExchange) and a.name == "matches.staging.events" for a in removal.actions)


def test_a_queue_named_like_an_events_exchange_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\.events"):
        desired(queue={"name": "matches.prod.events"})


@pytest.mark.parametrize(("version", "dead_letter", "limit"), [
    ("4.0.5", False, -1),  # RabbitMQ 4 would drop a message after 20 deliveries: lifted
    ("4.0.5", True, 5),  # the spec's limit, then the dead-letter queue
    ("3.10.8", False, None),  # RabbitMQ 3 never drops one (and refuses -1)
    (None, False, None),
])
def test_a_quorum_queue_without_a_dlq_never_drops_a_message_on_any_rabbitmq(version: str | None, dead_letter: bool,
                                                                             limit: int | None) -> None:
    broker = SimulatedBroker()
    broker.version = version
    want = desired(queue={"type": "quorum", "deadLetter": dead_letter, "deliveryLimit": 5})
    converge(broker, want)
    policy = broker.policies.get(("/", "matchenv.matches.staging"))
    assert (policy.definition.get("delivery-limit") if policy else None) == limit
    assert_converged(broker, want)


def test_a_snapshots_binding_lookups_see_only_the_vhost_kind_and_destination_asked_for() -> None:
    from matchenv.topology.snapshot import Binding, BrokerSnapshot

    bindings = [Binding("/", "matches-fanout", "matches.prod", "queue", "", "~"),
                Binding("/", "", "matches.prod", "queue", "matches.prod", "matches.prod"),  # the default exchange's
                Binding("other", "matches-fanout", "matches.prod", "queue", "", "~"),
                Binding("/", "matches-fanout", "matches.prod", "exchange", "", "~"),
                Binding("/", "matches-fanout", "matches-fanout.topics", "exchange", "", "~")]
    snapshot = BrokerSnapshot.build([], [], bindings, [], [], [])
    assert snapshot.bindings_to("/", "matches.prod") == [bindings[0]]
    assert snapshot.bindings_to("other", "matches.prod") == [bindings[2]]
    assert snapshot.bindings_to("/", "matches.dev") == []
    assert snapshot.exchange_bound("/", "matches-fanout", "matches-fanout.topics")
    assert not snapshot.exchange_bound("/", "matches.prod", "matches-fanout.topics")
    assert not snapshot.exchange_bound("other", "matches-fanout", "matches-fanout.topics")

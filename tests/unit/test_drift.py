"""What the broker's events say went, and how repairs are coalesced: without a broker."""

from __future__ import annotations

import threading

from matchenv.operator.drift import Changed, Repairs, changed
from tests.unit.world import World


def test_each_followed_event_names_the_object_it_removed() -> None:
    assert changed("queue.deleted", {"name": b"matches.dev", "vhost": b"/"}) == Changed("queue", "/", "matches.dev")
    assert changed("binding.deleted", {"source_name": "matches-fanout", "destination_name": "matches.dev",
                                       "destination_kind": "queue", "vhost": "/"}) == Changed("queue", "/",
                                                                                              "matches.dev")
    assert changed("binding.deleted", {"destination_name": "matches-fanout.topic", "destination_kind": "exchange",
                                       "vhost": "/"}) == Changed("exchange", "/", "matches-fanout.topic")
    assert changed("exchange.deleted", {"name": "matches.dev.dlx", "vhost": "/"}) == \
        Changed("exchange", "/", "matches.dev.dlx")
    assert changed("policy.cleared", {"name": "matchenv.matches.dev", "vhost": "/"}) == \
        Changed("policy", "/", "matchenv.matches.dev")
    assert changed("user.deleted", {"name": "matchenv-env.c1.default.dev"}) == \
        Changed("user", "", "matchenv-env.c1.default.dev")
    assert changed("permission.deleted", {"user": "matchenv-env.c1.default.dev", "vhost": "/"}) == \
        Changed("user", "", "matchenv-env.c1.default.dev")
    assert changed("queue.created", {"name": "matches.dev", "vhost": "/"}) is None


def test_the_reconciler_knows_whose_object_went_and_forgets_a_deleted_environment() -> None:
    world = World()
    world.add("dev")
    world.converge("dev")
    rec = world.reconciler
    assert rec.owner_of(Changed("queue", "/", "matches.dev")) == ("default", "dev")
    assert rec.owner_of(Changed("queue", "/", "matches.dev.dlq")) == ("default", "dev")
    assert rec.owner_of(Changed("user", "", "matchenv-env.c1.default.dev")) == ("default", "dev")
    assert rec.owner_of(Changed("exchange", "/", "matches.dev.dlx")) == ("default", "dev")
    assert rec.owner_of(Changed("exchange", "/", "matches-fanout")) is None  # shared: its bindings' events tell
    assert rec.owner_of(Changed("queue", "/", "someone.else")) is None
    world.delete("dev")
    assert rec.owner_of(Changed("queue", "/", "matches.dev")) is None


def test_a_deleted_binding_is_put_back_by_the_repair() -> None:
    world = World()
    world.add("dev")
    world.converge("dev")
    world.broker.bindings = [b for b in world.broker.bindings if b.destination != "matches.dev"]
    world.reconciler.repair("default", "dev")
    assert any(b.destination == "matches.dev" and b.source == "matches-fanout" for b in world.broker.bindings)


def test_a_burst_of_events_for_one_environment_makes_one_repair() -> None:
    done: list[tuple[str, str]] = []
    finished = threading.Event()
    stop = threading.Event()

    def repair(namespace: str, name: str) -> None:
        done.append((namespace, name))
        finished.set()

    repairs = Repairs(repair, stop)
    for _ in range(5):  # a queue's deletion: queue.deleted, binding.deleted ... before the thread runs
        repairs.add("default", "dev")
    repairs.start()
    assert finished.wait(5)
    stop.set()
    repairs.wake()
    assert done == [("default", "dev")]

"""The archive step: a stream archive kept for every exchange in use (looked at once per pass, not per environment),
begun on demand, and no longer following an exchange once its last environment goes."""

from __future__ import annotations

from tests.unit.world import World

ARCHIVE = ("/", "matches-fanout.archive")


def test_the_archive_is_kept_for_every_exchange_in_use_without_any_backfill() -> None:
    world = World()
    world.add("prod")
    world.converge("prod")
    archive = world.broker.queues[ARCHIVE]
    assert archive.type == "stream"
    assert any(b.source == "matches-fanout" for b in world.broker.snapshot().bindings_to(*ARCHIVE))
    policy = world.broker.policies[("/", "matchenv.matches-fanout.archive")]
    assert policy.definition == {"max-age": "30D", "max-length-bytes": 10_000_000_000}
    assert "BackfillComplete" not in {c["type"] for c in world.status("prod")["conditions"]}
    calls = world.broker.calls
    world.converge("prod")
    assert world.broker.calls == calls + 1  # the archive is not read again by every converge
    off = World()
    off.settings.archive = "off"
    off.add("prod")
    off.converge("prod")
    assert ARCHIVE not in off.broker.queues


def test_the_archive_stops_following_the_exchange_when_its_last_environment_goes() -> None:
    world = World()
    world.add("prod")
    world.add("dev")
    world.converge("prod")
    world.converge("dev")

    def archived() -> bool:
        return any(b.source == "matches-fanout" for b in world.broker.snapshot().bindings_to(*ARCHIVE))

    world.delete("dev")
    del world.kube.environments[("default", "dev")]
    assert archived()  # prod still takes the feed
    world.delete("prod")
    assert not archived()  # a publish that reaches no environment is unroutable again, not archived silently
    assert ARCHIVE in world.broker.queues  # what it holds is kept
    world.add("staging")
    world.converge("staging")
    assert archived()


def test_on_demand_the_archive_begins_with_the_first_environment_that_asks() -> None:
    world = World()
    world.settings.archive = "on-demand"
    world.add("prod")
    world.converge("prod")
    assert ARCHIVE not in world.broker.queues
    world.add("staging", backfill={"since": "1h"})
    world.converge("staging")
    assert ARCHIVE in world.broker.queues
    off = World()
    off.settings.archive = "off"
    off.add("staging", backfill={"since": "1h"})
    off.converge("staging")
    condition = off.condition("staging", "BackfillComplete")
    assert (condition["status"], condition["reason"]) == ("False", "ArchiveUnavailable")
    assert "MATCHENV_ARCHIVE=off" in condition["message"]
    assert off.jobs() == []


def test_the_step_says_why_there_is_nothing_to_backfill_from_when_archives_are_off(world: World) -> None:
    from matchenv.connection import BrokerConnection
    from matchenv.operator.steps.archive import ensure_archive

    world.add("prod")
    world.services.settings = world.settings.model_copy(update={"archive": "off"})
    conn = BrokerConnection("amqp://rabbitmq:5672", "http://rabbitmq:15672", "admin", "admin-pw")
    client = world.clients.get(conn)
    calls = world.broker.calls
    problem = ensure_archive(world.services, world.context("prod"), conn, client)
    assert problem is not None
    assert "MATCHENV_ARCHIVE=off" in problem
    assert world.broker.calls == calls
    assert ARCHIVE not in world.broker.queues

"""The backfill's lifecycle in the reconciler, against in-memory fakes: the archive made once per exchange, the Job
started only once the queue is bound, its outcome in status and the BackfillComplete condition, a failure retried
after a back-off, the Job and the broker objects removed with spec.backfill."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from matchenv.models import BackfillSpec
from matchenv.operator.backfills import request_digest, retry_delay, termination
from tests.unit.test_reconciler import World

ARCHIVE = ("/", "matches-fanout.archive")


def _jobs(world: World) -> list[dict[str, Any]]:
    return list(world.kube.jobs.values())


def _condition(world: World, name: str) -> dict[str, Any]:
    return next(c for c in world.status(name)["conditions"] if c["type"] == "BackfillComplete")


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


def test_a_backfill_runs_once_the_queue_is_bound_and_reports_what_it_delivered() -> None:
    world = World()
    world.add("staging", backfill={"since": "1h"})
    world.converge("staging")
    [job] = _jobs(world)
    name = job["metadata"]["name"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["matchenv", "backfill"]
    assert container["args"][:4] == ["--archive", "matches-fanout.archive", "--exchange", "matches.staging.backfill"]
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "backfill"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "MatchEnvironment"
    # its own user: reads the archive, writes the backfill exchange (bound to staging's queue only)
    perms = world.broker.permissions[("matchenv-backfill.default.staging", "/")]
    assert (perms.configure, perms.write, perms.read) == ("", r"^matches\.staging\.backfill$",
                                                         r"^matches-fanout\.archive$")
    bound = world.broker.snapshot().bindings_to("/", "matches.staging")
    assert {(b.source, b.routing_key) for b in bound} == {("matches-fanout", ""), ("matches.staging.backfill", "")}
    status = world.status("staging")["backfill"]
    assert status["phase"] == "Running"
    start = dt.datetime.fromisoformat(status["from"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - start).total_seconds() - 3600) < 60
    assert _condition(world, "staging")["reason"] == "Running"
    world.converge("staging")
    assert len(_jobs(world)) == 1  # the same Job, not another
    assert world.status("staging")["backfill"]["from"] == status["from"]  # fixed when first seen

    world.kube.finish_job("default", name, "Complete", json.dumps({"delivered": 500, "message": "ok"}))
    world.converge("staging")
    done = world.status("staging")["backfill"]
    assert (done["phase"], done["delivered"]) == ("Complete", 500)
    condition = _condition(world, "staging")
    assert (condition["status"], condition["reason"]) == ("True", "Completed")
    assert "delivered 500 archived matches" in condition["message"]

    # spec.backfill removed: the Job, the backfill user and exchange go; status drops it
    env = world.kube.environments[("default", "staging")]
    env["spec"].pop("backfill")
    world.converge("staging")
    world.converge("staging")
    assert _jobs(world) == []
    assert "matchenv-backfill.default.staging" not in world.broker.users
    assert ("/", "matches.staging.backfill") not in world.broker.exchanges
    assert world.status("staging").get("backfill") is None
    assert "BackfillComplete" not in {c["type"] for c in world.status("staging")["conditions"]}


def test_a_failed_backfill_says_why_and_a_new_job_starts_after_a_back_off() -> None:
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    world = World()
    world.reconciler.backfills.now = lambda: now[0]
    world.add("staging", backfill={"from": "2025-12-31T00:00:00Z"})
    world.converge("staging")
    [first] = _jobs(world)
    world.kube.finish_job("default", first["metadata"]["name"], "Failed",
                          json.dumps({"message": "cannot reach the broker: AMQPConnectionError"}))
    world.converge("staging")
    status = world.status("staging")["backfill"]
    assert status["phase"] == "Failed"
    assert "cannot reach the broker" in status["message"]
    assert _condition(world, "staging")["reason"] == "BackfillFailed"
    assert any(r == "BackfillFailed" for _, r, _ in world.kube.events)
    world.converge("staging")
    assert [j["metadata"]["name"] for j in _jobs(world)] == [first["metadata"]["name"]]  # not before its time
    now[0] += dt.timedelta(seconds=retry_delay(1) + 1)
    world.converge("staging")
    [second] = _jobs(world)
    assert second["metadata"]["name"].endswith("-2")
    assert world.status("staging")["backfill"]["attempts"] == 2


def test_a_changed_backfill_replaces_the_job_and_deleting_the_environment_stops_it() -> None:
    world = World()
    world.add("staging", backfill={"since": "1h"})
    world.converge("staging")
    [first] = _jobs(world)
    world.kube.environments[("default", "staging")]["spec"]["backfill"] = {"since": "24h"}
    world.converge("staging")
    [second] = _jobs(world)
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["metadata"]["name"].startswith(f"staging-backfill-{request_digest(BackfillSpec(since='24h'))[:8]}")
    world.delete("staging")
    assert _jobs(world) == []
    assert any(r == "BackfillStopped" and second["metadata"]["name"] in m for _, r, m in world.kube.events)
    assert "matchenv-backfill.default.staging" not in world.broker.users


def test_a_topic_subset_backfills_only_its_keys_through_a_topic_exchange() -> None:
    world = World()
    world.add("u14", queue={"routingKeys": ["U14.#"]}, backfill={"since": "1h"})
    world.converge("u14")
    assert world.broker.exchanges[("/", "matches.u14.backfill")].type == "topic"
    bound = world.broker.snapshot().bindings_to("/", "matches.u14")
    assert ("matches.u14.backfill", "U14.#") in {(b.source, b.routing_key) for b in bound}
    assert "--no-mandatory" in _jobs(world)[0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_termination_message_of_the_last_pod_is_read() -> None:
    pods = [{"status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": code, "reason": "Error", "finishedAt": at, "message": message}}}]}}
        for code, at, message in ((1, "2026-01-01T00:00:01Z", '{"message": "first"}'),
                                  (137, "2026-01-01T00:00:09Z", ""))]
    said, kubelet = termination(pods)
    assert said == {}
    assert kubelet == "exit code 137 (Error)"
    assert termination([]) == ({}, "")


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
    condition = _condition(off, "staging")
    assert (condition["status"], condition["reason"]) == ("False", "ArchiveUnavailable")
    assert "MATCHENV_ARCHIVE=off" in condition["message"]
    assert _jobs(off) == []


def test_a_backfill_secret_someone_else_made_holds_the_backfill_not_the_environment() -> None:
    world = World()
    world.kube.add_secret("default", "staging-backfill", {"url": "amqp://theirs"})
    world.add("staging", backfill={"since": "1h"})
    world.converge("staging")
    assert world.reason("staging") == "Converged"  # the queue, its binding and its workers go on
    condition = _condition(world, "staging")
    assert (condition["status"], condition["reason"]) == ("False", "SecretNotOwned")
    assert _jobs(world) == []
    assert "matchenv-backfill.default.staging" not in world.broker.users
    secret = world.kube.secrets[("default", "staging-backfill")]
    assert "ownerReferences" not in secret["metadata"]  # left as it was

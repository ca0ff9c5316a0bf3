"""The backfill step, against in-memory fakes: the Job started only once the queue is bound, its outcome in status
and the BackfillComplete condition, a failure retried after a back-off, the Job and the broker objects removed with
spec.backfill."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from matchenv.api import BackfillSpec
from matchenv.operator.backfills import request_digest, retry_delay, termination
from tests.unit.world import World

ARCHIVE = ("/", "matches-fanout.archive")


def test_a_backfill_runs_once_the_queue_is_bound_and_reports_what_it_delivered() -> None:
    world = World()
    world.add("staging", backfill={"since": "1h"})
    world.converge("staging")
    [job] = world.jobs()
    name = job["metadata"]["name"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["matchenv", "backfill"]
    assert container["args"][:4] == ["--archive", "matches-fanout.archive", "--exchange", "matches.staging.backfill"]
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "backfill"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "MatchEnvironment"
    # its own user: reads the archive, writes the backfill exchange (bound to staging's queue only)
    perms = world.broker.permissions[("matchenv-backfill.c1.default.staging", "/")]
    assert (perms.configure, perms.write, perms.read) == ("", r"^matches\.staging\.backfill$",
                                                         r"^matches-fanout\.archive$")
    bound = world.broker.snapshot().bindings_to("/", "matches.staging")
    assert {(b.source, b.routing_key) for b in bound} == {("matches-fanout", ""), ("matches.staging.backfill", "")}
    status = world.status("staging")["backfill"]
    assert status["phase"] == "Running"
    start = dt.datetime.fromisoformat(status["from"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - start).total_seconds() - 3600) < 60
    assert world.condition("staging", "BackfillComplete")["reason"] == "Running"
    world.converge("staging")
    assert len(world.jobs()) == 1  # the same Job, not another
    assert world.status("staging")["backfill"]["from"] == status["from"]  # fixed when first seen

    world.kube.finish_job("default", name, "Complete", json.dumps({"delivered": 500, "message": "ok"}))
    world.converge("staging")
    done = world.status("staging")["backfill"]
    assert (done["phase"], done["delivered"]) == ("Complete", 500)
    condition = world.condition("staging", "BackfillComplete")
    assert (condition["status"], condition["reason"]) == ("True", "Completed")
    assert "delivered 500 archived matches" in condition["message"]
    # done: its user (which could read the whole archive) and its exchange go, though spec.backfill stays
    world.converge("staging")
    assert "matchenv-backfill.c1.default.staging" not in world.broker.users
    assert ("/", "matches.staging.backfill") not in world.broker.exchanges
    assert world.status("staging")["backfill"]["phase"] == "Complete"
    assert len(world.jobs()) == 1  # and no new Job
    # a changed request makes them again
    env = world.kube.environments[("default", "staging")]
    env["spec"]["backfill"] = {"since": "2h"}
    world.converge("staging")
    assert "matchenv-backfill.c1.default.staging" in world.broker.users
    assert world.status("staging")["backfill"]["phase"] == "Running"

    # spec.backfill removed: the Job, the backfill user and exchange go; status drops it
    env = world.kube.environments[("default", "staging")]
    env["spec"].pop("backfill")
    world.converge("staging")
    world.converge("staging")
    assert world.jobs() == []
    assert "matchenv-backfill.c1.default.staging" not in world.broker.users
    assert ("/", "matches.staging.backfill") not in world.broker.exchanges
    assert world.status("staging").get("backfill") is None
    assert "BackfillComplete" not in {c["type"] for c in world.status("staging")["conditions"]}


def test_a_failed_backfill_says_why_and_a_new_job_starts_after_a_back_off() -> None:
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    world = World()
    world.reconciler.backfills.now = lambda: now[0]
    world.add("staging", backfill={"from": "2025-12-31T00:00:00Z"})
    world.converge("staging")
    [first] = world.jobs()
    world.kube.finish_job("default", first["metadata"]["name"], "Failed",
                          json.dumps({"message": "cannot reach the broker: AMQPConnectionError"}))
    world.converge("staging")
    status = world.status("staging")["backfill"]
    assert status["phase"] == "Failed"
    assert "cannot reach the broker" in status["message"]
    assert world.condition("staging", "BackfillComplete")["reason"] == "BackfillFailed"
    assert any(r == "BackfillFailed" for _, r, _ in world.kube.events)
    world.converge("staging")
    assert [j["metadata"]["name"] for j in world.jobs()] == [first["metadata"]["name"]]  # not before its time
    now[0] += dt.timedelta(seconds=retry_delay(1) + 1)
    world.converge("staging")
    [second] = world.jobs()
    assert second["metadata"]["name"].endswith("-2")
    assert world.status("staging")["backfill"]["attempts"] == 2


def test_a_changed_backfill_replaces_the_job_and_deleting_the_environment_stops_it() -> None:
    world = World()
    world.add("staging", backfill={"since": "1h"})
    world.converge("staging")
    [first] = world.jobs()
    world.kube.environments[("default", "staging")]["spec"]["backfill"] = {"since": "24h"}
    world.converge("staging")
    [second] = world.jobs()
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["metadata"]["name"].startswith(f"staging-backfill-{request_digest(BackfillSpec(since='24h'))[:8]}")
    world.delete("staging")
    assert world.jobs() == []
    assert any(r == "BackfillStopped" and second["metadata"]["name"] in m for _, r, m in world.kube.events)
    assert "matchenv-backfill.c1.default.staging" not in world.broker.users


def test_a_topic_subset_backfills_only_its_keys_through_a_topic_exchange() -> None:
    world = World()
    world.add("u14", queue={"routingKeys": ["U14.#"]}, backfill={"since": "1h"})
    world.converge("u14")
    assert world.broker.exchanges[("/", "matches.u14.backfill")].type == "topic"
    bound = world.broker.snapshot().bindings_to("/", "matches.u14")
    assert ("matches.u14.backfill", "U14.#") in {(b.source, b.routing_key) for b in bound}
    assert "--no-mandatory" in world.jobs()[0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_termination_message_of_the_last_pod_is_read() -> None:
    pods = [{"status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": code, "reason": "Error", "finishedAt": at, "message": message}}}]}}
        for code, at, message in ((1, "2026-01-01T00:00:01Z", '{"message": "first"}'),
                                  (137, "2026-01-01T00:00:09Z", ""))]
    said, kubelet = termination(pods)
    assert said == {}
    assert kubelet == "exit code 137 (Error)"
    assert termination([]) == ({}, "")


def test_a_backfill_secret_someone_else_made_holds_the_backfill_not_the_environment() -> None:
    world = World()
    world.kube.add_secret("default", "staging-backfill", {"url": "amqp://theirs"})
    world.add("staging", backfill={"since": "1h"})
    world.converge("staging")
    assert world.reason("staging") == "Converged"  # the queue, its binding and its workers go on
    condition = world.condition("staging", "BackfillComplete")
    assert (condition["status"], condition["reason"]) == ("False", "SecretNotOwned")
    assert world.jobs() == []
    assert "matchenv-backfill.c1.default.staging" not in world.broker.users
    secret = world.kube.secrets[("default", "staging-backfill")]
    assert "ownerReferences" not in secret["metadata"]  # left as it was


def test_a_converge_reading_an_older_status_keeps_the_running_job() -> None:
    """Two converges of one environment, the second with the environment as read before the first wrote its
    status (a watch event waiting for the lock): the Job the first started is the one in progress."""
    import copy

    world = World()
    world.add("staging", backfill={"since": "1h"})
    stale = copy.deepcopy(world.kube.environment("default", "staging"))
    world.converge("staging")
    [job] = world.jobs()
    world.reconciler.converge(stale)
    assert [j["metadata"]["name"] for j in world.jobs()] == [job["metadata"]["name"]]  # not deleted, no second
    status = world.status("staging")["backfill"]
    assert (status["job"], status["attempts"], status["phase"]) == (job["metadata"]["name"], 1, "Running")
    assert status["from"] == job["spec"]["template"]["spec"]["containers"][0]["args"][5]


def test_no_backfill_asked_or_ever_run_is_no_step(world: World) -> None:
    from matchenv.operator.steps.backfill import run_backfill
    from matchenv.operator.steps.topology import TopologyOutcome

    world.add("prod")
    assert run_backfill(world.services, world.context("prod"), TopologyOutcome()) is None
    assert world.jobs() == []


def test_a_job_the_api_server_refuses_is_reported_not_raised(world: World) -> None:
    from kubernetes.client.exceptions import ApiException

    from matchenv.operator.steps.backfill import run_backfill
    from matchenv.operator.steps.topology import converge_topology

    world.add("staging", backfill={"since": "1h"})
    topology = converge_topology(world.services, world.context("staging"))  # the queue bound: the Job may start

    def refuse(body: dict[str, Any]) -> dict[str, Any]:
        raise ApiException(status=403, reason="Forbidden")

    world.kube.create_job = refuse  # type: ignore[method-assign]
    outcome = run_backfill(world.services, world.context("staging"), topology)
    assert outcome is not None
    assert (outcome.ok, outcome.reason) == (False, "BackfillFailed")
    assert outcome.message == "cannot run the backfill Job: 403 Forbidden"
    assert ("staging", "BackfillFailed", outcome.message) in world.kube.events

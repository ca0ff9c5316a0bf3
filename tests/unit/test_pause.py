"""spec.pauseMode, against in-memory fakes: a pause in Unbind mode takes the queue off the feed and owes it a catch-up
from the archive, run as a Job once it is resumed and bound again; Hold keeps today's bound queue; without the archive
Unbind holds and says so; nothing owed is forgotten when it is paused again before the catch-up completed."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

from matchenv.api import MatchEnvironmentSpec
from matchenv.operator.pause import CATCH_UP_MARGIN, NO_ARCHIVE, plan_pause
from matchenv.operator.status import parse_rfc3339, replacing, status_changed
from tests.cases import environment
from tests.unit.world import World

FEED = ("matches-fanout", "")
REPLAYS = ("matches.dev.backfill", "")


def bindings(world: World, queue: str = "matches.dev") -> set[tuple[str, str]]:
    return {(b.source, b.routing_key) for b in world.broker.snapshot().bindings_to("/", queue)}


def set_spec(world: World, name: str, **fields: Any) -> None:
    spec = world.kube.environments[("default", name)]["spec"]
    spec.update(fields)


def catch_up_jobs(world: World) -> list[dict[str, Any]]:
    return [j for j in world.jobs() if j["metadata"]["labels"].get("matchenv.io/replay") == "catch-up"]


def test_unbind_takes_the_queue_off_the_feed_and_resuming_replays_what_it_missed() -> None:
    world = World()
    world.add("dev")
    world.converge("dev")
    assert FEED in bindings(world)

    set_spec(world, "dev", paused=True, pauseMode="Unbind")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    world.converge("dev")
    assert bindings(world) == set()  # nothing from the feed: no backlog grows
    assert "matchenv-backfill.c1.default.dev" not in world.broker.users  # the replay's user: only once resumed
    status = world.status("dev")
    assert status["phase"] == "Paused"
    assert status.get("exchange") is None  # what the broker does: bound to nothing
    topology = world.condition("dev", "TopologyReady")
    assert (topology["status"], topology["reason"]) == ("True", "Unbound")
    pause = copy.deepcopy(status["pause"])
    assert pause["mode"] == "Unbind"
    since = parse_rfc3339(pause["since"])
    assert since is not None
    assert since >= before
    owed = pause["catchUp"]
    assert owed["phase"] == "Pending"
    assert "once the environment is resumed" in owed["message"]
    start = parse_rfc3339(owed["from"])
    assert start is not None
    assert abs((since - start) - CATCH_UP_MARGIN) <= dt.timedelta(seconds=1)
    assert catch_up_jobs(world) == []  # nothing replays into a queue that is off the feed
    writes = world.kube.writes["status"]
    world.converge("dev")  # idempotent: the same pause, nothing written
    assert world.kube.writes["status"] == writes
    assert world.status("dev")["pause"]["since"] == pause["since"]

    # a binding made by hand meanwhile is taken away: the spec asks for none
    world.broker.bind_queue("/", "matches-fanout", "matches.dev")
    world.converge("dev")
    assert FEED not in bindings(world)

    set_spec(world, "dev", paused=False)
    world.converge("dev")
    assert FEED in bindings(world)
    assert REPLAYS in bindings(world)
    [job] = catch_up_jobs(world)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--from") + 1] == owed["from"]
    assert args[args.index("--exchange") + 1] == "matches.dev.backfill"
    status = world.status("dev")
    assert "mode" not in status["pause"]
    assert "since" not in status["pause"]
    assert status["pause"]["catchUp"]["phase"] == "Running"
    assert status["phase"] != "Paused"
    assert any(reason == "CatchUpStarted" for _, reason, _ in world.kube.events)

    world.kube.finish_job("default", job["metadata"]["name"], "Complete", json.dumps({"delivered": 1000}))
    world.converge("dev")
    done = world.status("dev")["pause"]["catchUp"]
    assert (done["phase"], done["delivered"]) == ("Complete", 1000)
    assert any(reason == "CatchUpComplete" and "delivered 1000" in message
               for _, reason, message in world.kube.events)
    world.converge("dev")
    # done: the replay's user (it may read the whole archive) and exchange go; the record stays, no new Job
    assert "matchenv-backfill.c1.default.dev" not in world.broker.users
    assert ("/", "matches.dev.backfill") not in world.broker.exchanges
    assert bindings(world) == {FEED}
    assert len(catch_up_jobs(world)) == 1
    writes = world.kube.writes["status"]
    world.converge("dev")
    assert world.kube.writes["status"] == writes
    assert world.status("dev")["pause"]["catchUp"]["phase"] == "Complete"


def test_paused_again_before_the_catch_up_completed_replays_from_the_older_start() -> None:
    world = World()
    world.add("dev", paused=True, pauseMode="Unbind")
    world.converge("dev")
    first = dict(world.status("dev")["pause"]["catchUp"])
    set_spec(world, "dev", paused=False)
    world.converge("dev")
    [job] = catch_up_jobs(world)
    assert world.status("dev")["pause"]["catchUp"]["job"] == job["metadata"]["name"]

    set_spec(world, "dev", paused=True)
    world.converge("dev")
    owed = world.status("dev")["pause"]["catchUp"]
    assert owed["from"] == first["from"]  # the first gap is still owed
    assert owed["request"] != first["request"]
    assert owed["phase"] == "Pending"
    assert catch_up_jobs(world) == []  # the unfinished Job went: the new one covers both gaps
    assert "job" not in owed
    assert "startTime" not in owed

    set_spec(world, "dev", paused=False)
    world.converge("dev")
    [again] = catch_up_jobs(world)
    args = again["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--from") + 1] == first["from"]


def test_a_catch_up_and_a_backfill_keep_their_own_jobs() -> None:
    world = World()
    world.add("dev", backfill={"since": "1h"})
    world.converge("dev")
    [backfill] = world.jobs()
    set_spec(world, "dev", paused=True, pauseMode="Unbind")
    world.converge("dev")
    set_spec(world, "dev", paused=False)
    world.converge("dev")
    world.converge("dev")
    names = {j["metadata"]["name"] for j in world.jobs()}
    assert backfill["metadata"]["name"] in names
    assert len(names) == 2
    assert world.status("dev")["backfill"]["phase"] == "Running"
    assert world.status("dev")["pause"]["catchUp"]["phase"] == "Running"


def test_hold_keeps_the_queue_bound_and_says_since_when() -> None:
    world = World()
    world.add("dev", paused=True)
    world.converge("dev")
    assert FEED in bindings(world)
    pause = world.status("dev")["pause"]
    assert pause["mode"] == "Hold"
    assert pause["since"]
    assert "catchUp" not in pause
    assert world.condition("dev", "TopologyReady")["reason"] == "Converged"
    set_spec(world, "dev", paused=False)
    world.converge("dev")
    assert "pause" not in world.status("dev")
    assert catch_up_jobs(world) == []


def test_without_the_archive_unbind_holds_and_says_why() -> None:
    world = World()
    world.settings.archive = "off"
    world.add("dev", paused=True, pauseMode="Unbind")
    world.converge("dev")
    assert FEED in bindings(world)
    pause = world.status("dev")["pause"]
    assert (pause["mode"], pause["message"]) == ("Hold", NO_ARCHIVE)
    assert "catchUp" not in pause


def test_the_plan_alone() -> None:
    now = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC)
    spec = MatchEnvironmentSpec.model_validate(environment("dev", paused=True, pauseMode="Unbind")["spec"])
    plan = plan_pause(spec, {}, now, archive=True)
    assert plan.detached
    assert plan.status is not None
    assert plan.catch_up is not None
    assert plan.status["since"] == "2026-12-04T12:00:00Z"
    assert plan.catch_up["from"] == "2026-12-04T11:59:30Z"
    # the same pause later: the same request, since kept
    later = plan_pause(spec, plan.status, now + dt.timedelta(minutes=5), archive=True)
    assert later.status == plan.status
    running = MatchEnvironmentSpec.model_validate(environment("dev")["spec"])
    assert plan_pause(running, {}, now, archive=True) == plan_pause(running, {}, now, archive=False)
    assert plan_pause(running, {}, now, archive=True).status is None


def test_a_status_object_is_replaced_whole_and_its_removed_keys_do_not_count_as_changes() -> None:
    old = {"request": "a", "job": "x-1", "completionTime": "t", "nested": {"k": 1, "gone": 2}}
    patch = replacing({"request": "b", "nested": {"k": 1}}, old)
    assert patch == {"job": None, "completionTime": None, "request": "b", "nested": {"gone": None, "k": 1}}
    assert not status_changed({"pause": {"mode": None, "catchUp": {"phase": "Complete"}}},
                              {"pause": {"catchUp": {"phase": "Complete"}}})
    assert status_changed({"pause": {"mode": "Hold"}}, {"pause": {}})


def test_on_demand_an_unbind_pause_starts_the_archive_it_will_catch_up_from() -> None:
    world = World()
    world.settings.archive = "on-demand"
    world.add("dev")
    world.converge("dev")
    assert ("/", "matches-fanout.archive") not in world.broker.queues
    set_spec(world, "dev", paused=True, pauseMode="Unbind")
    world.converge("dev")
    assert ("/", "matches-fanout.archive") in world.broker.queues

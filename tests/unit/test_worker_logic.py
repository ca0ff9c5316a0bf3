"""The worker's decisions without a broker: configuration, validation, retries, dead-lettering. Every message goes the
one way production sends it: the consumer's task message through :class:`Batcher` to the store."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from prometheus_client import REGISTRY

from matchenv.contracts import TASK_NAME
from matchenv.match import Match
from matchenv.workers import metrics
from matchenv.workers.app import Runtime, after_node, worker_argv
from matchenv.workers.batches import Batcher, Verdict
from matchenv.workers.config import WorkerConfig, WorkerConfigError
from matchenv.workers.parsing import Invalid, scraped_at
from matchenv.workers.stores import Outcome, StoreUnavailable, TransientStoreError
from matchenv_devkit.services.process import wait_for

ENV = {"CELERY_BROKER_URL": "amqp://u:p@broker:5672/%2F", "MATCHENV_QUEUE": "matches.dev",
       "DATABASE_URL": "postgresql://app:pw@db:5432/dev"}
MATCH = {"home_team": "A", "away_team": "B", "match_date": "2025-10-13", "season": "2024-25", "age_group": "U14",
         "match_type": "League", "external_match_id": "m1"}


class ScriptedStore:
    """Raises the scripted errors in order, then answers ``outcome``."""

    def __init__(self, *errors: Exception, outcome: Outcome = "created") -> None:
        self.errors = list(errors)
        self.outcome: Outcome = outcome
        self.calls = 0
        self.stamps: list[dt.datetime | None] = []
        self.matches: list[Match] = []

    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome:
        self.calls += 1
        self.stamps.append(scraped_at)
        self.matches.append(match)
        if self.errors:
            raise self.errors.pop(0)
        return self.outcome

    def upsert_many(self, matches: list[tuple[Match, dt.datetime | None]]) -> list[Outcome]:
        """A batch: one call, one transaction (the scripted error fails all of it)."""
        self.calls += 1
        self.stamps.extend(stamp for _, stamp in matches)
        self.matches.extend(match for match, _ in matches)
        if self.errors:
            raise self.errors.pop(0)
        return [self.outcome] * len(matches)

    def close(self) -> None:
        return None


class RecordingRuntime(Runtime):
    letters: list[tuple[Any, str, str]]

    def dead_letter(self, body: Any, reason: str, error: str, **kwargs: Any) -> bool:
        self.letters.append((body, reason, error))
        return bool(self.config.dead_letter_exchange)


class Instant(threading.Event):
    """The worker's stop event, with no real pauses: a wait returns at once (calling ``during``)."""

    def __init__(self, during: Any = lambda: None) -> None:
        super().__init__()
        self.during = during

    def wait(self, timeout: float | None = None) -> bool:
        self.during()
        return self.is_set()


def runtime(store: ScriptedStore, **env: str) -> RecordingRuntime:
    config = WorkerConfig.from_env({**ENV, **env})
    rt = RecordingRuntime(config=config, app=Celery(set_as_current=False), store_factory=lambda: store,
                          sleep=lambda _s: None, stopping=Instant())
    rt.letters = []
    return rt


class TaskMessage:
    """A protocol-2 task message of ours as Celery's consumer hands it to the batches."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], headers: dict[str, str] | None = None,
                 task_id: str = "task-1") -> None:
        self.headers = {"task": TASK_NAME, "id": task_id, **(headers or {})}
        self.body = json.dumps([list(args), kwargs, {}])
        self.content_type = "application/json"
        self.content_encoding = "utf-8"

    def decode(self) -> Any:
        return json.loads(self.body)


def handle(rt: Runtime, *args: Any, headers: dict[str, str] | None = None, batcher: Batcher | None = None,
           **kwargs: Any) -> Verdict:
    """What the worker does with one message: ``ack`` (stored, or dead-lettered) or ``requeue``."""
    [(_, verdict)] = (batcher or Batcher(rt)).process([TaskMessage(args, kwargs, headers)])
    return verdict


def stored(outcome: str) -> float:
    """The worker's count of matches stored with ``outcome`` (its metric)."""
    return REGISTRY.get_sample_value("matchenv_worker_matches_total", {"outcome": outcome}) or 0.0


def test_config_from_the_deployment_environment() -> None:
    config = WorkerConfig.from_env({**ENV, "MATCHENV_QUEUE_TYPE": "quorum"}, concurrency=3)
    assert config.queue == "matches.dev"
    assert config.queue_type == "quorum"
    assert config.dead_letter_exchange == "matches.dev.dlx"
    assert config.concurrency == 3
    assert config.database.kind == "postgres"
    assert config.database.describe() == "postgres at db:5432/dev"
    assert "pw" not in repr(config)


def test_supabase_keys_and_fallbacks() -> None:
    env = {"RABBITMQ_URL": "amqp://x", "SUPABASE_URL": "https://p.supabase.co", "SUPABASE_KEY": "k"}
    config = WorkerConfig.from_env(env, queue="q")
    assert config.database.kind == "supabase"
    assert config.broker_url.get_secret_value() == "amqp://x"
    service = WorkerConfig.from_env({**env, "SUPABASE_SERVICE_KEY": "s"}, queue="q")
    assert service.database.key is not None
    assert service.database.key.get_secret_value() == "s"


@pytest.mark.parametrize(("drop", "message"), [
    ("CELERY_BROKER_URL", "CELERY_BROKER_URL or RABBITMQ_URL"),
    ("MATCHENV_QUEUE", "--queue or set MATCHENV_QUEUE"),
    ("DATABASE_URL", "set DATABASE_URL, or SUPABASE_URL"),
])
def test_missing_configuration_names_the_variable(drop: str, message: str) -> None:
    with pytest.raises(WorkerConfigError, match=message.replace("(", r"\(")):
        WorkerConfig.from_env({k: v for k, v in ENV.items() if k != drop})


def test_valid_match_is_stored() -> None:
    rt = runtime(ScriptedStore(outcome="updated"))
    before = stored("updated")
    assert handle(rt, MATCH) == "ack"
    assert stored("updated") == before + 1
    assert rt.letters == []


@pytest.mark.parametrize(("args", "kwargs", "error"), [
    ((), {}, "expected one match object"),
    ((MATCH, MATCH), {}, "expected one match object"),
    (("not a dict",), {}, "expected one match object"),
    (({**MATCH, "home_team": ""},), {}, "home_team: String should have at least 1 character"),
    (({**MATCH, "away_score": -2},), {}, "away_score: Input should be greater than or equal to 0"),
])
def test_bad_input_is_dead_lettered_with_its_reason(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                    error: str) -> None:
    store = ScriptedStore()
    rt = runtime(store)
    assert handle(rt, *args, **kwargs) == "ack"
    assert len(rt.letters) == 1
    assert rt.letters[0][1] == "invalid"
    assert error in rt.letters[0][2]
    assert store.calls == 0


def test_a_match_kombu_wrote_with_its_own_json_types_is_read_and_stored() -> None:
    """A Celery client sending a ``date`` object: kombu writes it as ``{"__type__": "date", ...}``, which only
    kombu's decoder reads back; the quick read of our publisher's plain JSON gives way to it."""
    from kombu.message import Message as KombuMessage
    from kombu.utils.json import dumps

    store = ScriptedStore()
    rt = runtime(store)
    match = {**MATCH, "match_date": dt.date(2025, 3, 1)}
    assert '"__type__": "date"' in dumps(match)
    message = KombuMessage(body=dumps([[match], {}, {}]), content_type="application/json",
                           content_encoding="utf-8", headers={"task": TASK_NAME, "id": "k1"})
    assert Batcher(rt).process([message]) == [(message, "ack")]
    assert (store.calls, rt.letters) == (1, [])
    assert store.matches[0].match_date == dt.date(2025, 3, 1)


def test_the_quick_read_of_our_publishers_body_is_the_long_read_or_none() -> None:
    """``parse_body`` (one pass of pydantic over the JSON) gives the match the long way (kombu's decoder, then the
    model) gives, and None for every body the long way reads otherwise or refuses."""
    from matchenv.scraper.messages import task_message
    from matchenv.scraper.sources import synthetic
    from matchenv.workers.parsing import parse, parse_body

    odd = {**MATCH, "home_team": "  Ünïon \"Q\" \\ ", "notes": "é\n\t", "home_score": 2.0, "division_id": "7",
           "league": "Academy", "match_status": "completed", "match_time": "09:30", "unknown": [1]}
    for raw in [*(m.data for m in synthetic(200, seed=5)), odd]:
        assert isinstance(raw, dict)
        body = task_message(raw).body
        long = parse(*json.loads(body)[:2])
        assert not isinstance(long, Invalid)
        assert parse_body(body) == long[0]
    for body in ([[{**MATCH, "home_score": -1}], {}, {}], [[MATCH], {"x": 1}, {}], [[MATCH, MATCH], {}, {}],
                 [[], {"match_data": MATCH}, {}], [[MATCH], {}], {"args": [MATCH]},
                 [[{**MATCH, "season": ""}], {}, {}]):
        assert parse_body(json.dumps(body)) is None
    assert parse_body(b"not json") is None


def test_the_upserts_argument_holds_every_field_of_the_match_and_the_stamp() -> None:
    from matchenv.workers.stores import _payload_json

    stamp = dt.datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=dt.UTC)
    match = Match.model_validate({**MATCH, "home_team": "Ünïon \"Q\" \\", "notes": "é\n", "league": "Academy",
                                  "home_score": 3})
    assert json.loads(_payload_json(match, stamp)) == {**match.model_dump(mode="json"),
                                                        "scraped_at": "2026-11-23T10:00:00.123456+00:00"}
    assert json.loads(_payload_json(match, None))["scraped_at"] is None
    assert json.loads(_payload_json(match, None))["away_score"] is None  # every field, the unset ones null


def test_match_data_keyword_is_accepted() -> None:
    store = ScriptedStore()
    rt = runtime(store)
    assert handle(rt, match_data=MATCH) == "ack"
    assert (store.calls, rt.letters) == (1, [])


def test_transient_errors_are_retried_then_succeed() -> None:
    store = ScriptedStore(TransientStoreError("deadlock"), TransientStoreError("deadlock"))
    rt = runtime(store)
    before = stored("created")
    assert handle(rt, MATCH) == "ack"
    assert store.calls == 3
    assert stored("created") == before + 1
    assert rt.letters == []


def test_transient_errors_three_times_dead_letter_once() -> None:
    # the batch three times, then (to find the culprit) the match alone three times
    store = ScriptedStore(*(TransientStoreError("serialization failure") for _ in range(6)))
    rt = runtime(store)
    assert handle(rt, MATCH) == "ack"
    assert store.calls == 6
    assert [(body, r, "after 3 tries" in e) for body, r, e in rt.letters] == [(MATCH, "store-error", True)]


def test_unreachable_database_is_waited_for_never_dead_lettered() -> None:
    store = ScriptedStore(*(StoreUnavailable("down") for _ in range(8)))
    rt = runtime(store)
    assert handle(rt, MATCH) == "ack"
    assert store.calls == 9
    assert rt.letters == []


def test_a_worker_stopping_while_the_database_is_down_gives_the_messages_back() -> None:
    store = ScriptedStore(*(StoreUnavailable("down") for _ in range(8)))
    rt = runtime(store)
    rt.stopping.set()  # SIGTERM during the wait
    assert handle(rt, MATCH) == "requeue"
    assert (store.calls, rt.letters) == (1, [])


def test_worker_uses_threads_and_only_its_queue() -> None:
    argv = worker_argv(WorkerConfig.from_env(ENV, concurrency=4))
    assert "--pool=threads" in argv
    assert "--concurrency=4" in argv
    assert argv[argv.index("--queues") + 1] == "matches.dev"
    assert {"--without-gossip", "--without-mingle", "--without-heartbeat"} <= set(argv)


def test_without_a_dlq_invalid_input_is_dropped_but_a_valid_match_is_never() -> None:
    from matchenv.workers.stores import PermanentStoreError

    store = ScriptedStore(PermanentStoreError("constraint"), PermanentStoreError("constraint"))
    rt = runtime(store, MATCHENV_DEAD_LETTER_EXCHANGE="")
    assert handle(rt, {"home_team": ""}) == "ack"  # dropped: there is nowhere to keep it (logged)
    assert handle(rt, MATCH) == "requeue"  # back to its queue, not acknowledged
    assert store.calls == 2


def test_an_overlong_text_field_is_invalid_and_named() -> None:
    rt = runtime(ScriptedStore())
    assert handle(rt, {**MATCH, "notes": "x" * (2 * 1024 * 1024)}) == "ack"
    (_, reason, error), = rt.letters
    assert reason == "invalid"
    assert error.startswith("notes: String should have at most 2000 characters")


def test_the_publishers_stamp_reaches_the_store() -> None:
    store = ScriptedStore()
    rt = runtime(store)
    handle(rt, MATCH, headers={"x-matchenv-scraped-at": "2026-11-23T10:00:00+00:00"})
    handle(rt, MATCH)
    assert store.stamps == [dt.datetime(2026, 11, 23, 10, tzinfo=dt.UTC), None]
    assert scraped_at(type("R", (), {"headers": {"x-matchenv-scraped-at": "garbage"}})()) is None


def test_a_batch_reads_protocol_2_and_1_and_names_what_is_not_our_task() -> None:
    from types import SimpleNamespace

    from matchenv.contracts import TASK_NAME
    from matchenv.workers.batches import _task

    v2 = SimpleNamespace(headers={"task": TASK_NAME, "id": "t1"})
    assert _task(v2, [[{"home_team": "A"}], {}, {}]) == ([{"home_team": "A"}], {})
    assert _task(v2, {"not": "a list"}).startswith("malformed: ")
    v1 = SimpleNamespace(headers={})
    assert _task(v1, {"task": TASK_NAME, "args": [{"a": 1}], "kwargs": {}}) == ([{"a": 1}], {})
    assert _task(v1, {"task": "some.other.task", "args": []}) == "unknown-task: no such task here: 'some.other.task'"
    assert _task(SimpleNamespace(headers=None), ["just", "a", "list"]) == "malformed: not a Celery task message"


def test_a_stamp_from_the_future_is_dead_lettered_naming_the_header() -> None:
    from matchenv.workers.parsing import stamp_problem

    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
    assert stamp_problem(None, now) is None
    assert stamp_problem(now + dt.timedelta(minutes=4), now) is None  # clock skew is allowed
    assert stamp_problem(now - dt.timedelta(days=400), now) is None
    problem = stamp_problem(now + dt.timedelta(days=365), now)
    assert problem is not None
    assert problem.startswith("header x-matchenv-scraped-at is 2027-12-02T12:00:00+00:00")

    next_year = {"x-matchenv-scraped-at": (dt.datetime.now(dt.UTC) + dt.timedelta(days=365)).isoformat()}
    store = ScriptedStore()
    rt = runtime(store, MATCHENV_DEAD_LETTER_EXCHANGE="matches.dev.dlx")
    assert handle(rt, MATCH, headers=next_year) == "ack"
    assert store.calls == 0
    (body, reason, error), = rt.letters
    assert (body, reason) == (MATCH, "invalid")
    assert "x-matchenv-scraped-at" in error


def test_headers_of_every_amqp_type_can_be_written_back() -> None:
    import decimal

    import pika.data

    from matchenv.amqp import encodable_headers

    headers = {"x-float": 1.5, "x-double": -2.25e300, "x-big": 2**40, "x-huge": 2**70, "x-dec": decimal.Decimal("1.5"),
               "x-wide-dec": decimal.Decimal("12345678901234567890.5"), "x-old": dt.datetime(1960, 1, 1),
               "x-bytes": b"\x00\xff", "x-none": None, "x-bool": True, "x-list": [1.5, (2, 3.0), {"n": 0.5}],
               "x-table": {"inner": {"f": 0.1}}, "k" * 300: "long key", "x-str": "héllo"}
    out = encodable_headers(headers)
    pika.data.encode_table([], out)  # raises if anything is left that pika cannot write
    assert out["x-float"] == "1.5"
    assert out["x-double"] == "-2.25e+300"
    assert out["x-big"] == 2**40
    assert out["x-huge"] == str(2**70)
    assert out["x-dec"] == decimal.Decimal("1.5")
    assert out["x-wide-dec"] == "12345678901234567890.5"
    assert out["x-bytes"] == b"\x00\xff"
    assert out["x-none"] is None
    assert out["x-bool"] is True
    assert out["x-list"] == ["1.5", [2, "3.0"], {"n": "0.5"}]
    assert out["x-table"] == {"inner": {"f": "0.1"}}
    assert out["k" * 255] == "long key"
    assert out["x-str"] == "héllo"


def test_errors_of_one_match_are_told_from_errors_of_the_whole_store() -> None:
    from matchenv.workers.stores import StoreRefused, _refusal

    for sqlstate in ("23514", "22003", "23505", "P0001"):  # a CHECK, a number out of range, a unique key, RAISE
        assert _refusal(sqlstate, "x") is None
    from matchenv.workers.stores import _sqlstate

    # through Supabase: PostgREST's code is a SQLSTATE, one of its own, a bare HTTP status, or none
    assert [_sqlstate(c) for c in ("22023", "42501", "PGRST301", "401", "")] == ["22023", "42501", "", "", ""]
    assert _refusal(_sqlstate("22023"), "x") is None  # one match's data: dead-letter that one
    for sqlstate, hint in (("42501", "permission denied"), ("25006", "read-only"), ("42P01", "table is missing"),
                           ("", "")):
        refused = _refusal(sqlstate, "detail")
        assert isinstance(refused, StoreRefused)
        assert hint in str(refused)
        assert str(refused).endswith("detail")


def test_a_refusing_store_holds_the_message_and_the_worker_reports_why() -> None:
    from matchenv.workers.stores import StoreRefused

    store = ScriptedStore(StoreRefused("the database refuses every write (permission denied): 42501"),
                          StoreRefused("the database refuses every write (permission denied): 42501"))
    rt = runtime(store, MATCHENV_DEAD_LETTER_EXCHANGE="matches.dev.dlx")
    seen: list[tuple[bool, str]] = []
    rt.stopping = Instant(during=lambda: seen.append(metrics.HEALTH.readiness()))  # what a probe reads meanwhile
    metrics.HEALTH.consuming.set()
    try:
        assert handle(rt, MATCH) == "ack"
    finally:
        metrics.HEALTH.consuming.clear()
    assert rt.letters == []  # never dead-lettered
    assert store.calls == 3
    assert seen[0] == (False, "holding messages: the database refuses every write (permission denied): 42501")
    metrics.HEALTH.consuming.set()
    assert metrics.HEALTH.readiness() == (True, "ok")  # released once the store took it
    metrics.HEALTH.consuming.clear()


def test_liveness_fails_only_for_a_batch_without_progress() -> None:
    from matchenv.workers.metrics import Health

    now = [100.0]
    health = Health(stuck_after=60, clock=lambda: now[0])
    now[0] += 1000
    assert health.liveness() == (True, "ok")  # idle for long: fine
    health.busy()
    now[0] += 59
    assert health.liveness()[0]
    health.progress()  # a retry, a wait that ended
    now[0] += 59
    assert health.liveness()[0]
    now[0] += 2
    alive, why = health.liveness()
    assert not alive
    assert "no progress for 61 s" in why
    health.idle()
    assert health.liveness()[0]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_stored_match_says_how_fresh_it_was_and_the_newest_stamp_stored() -> None:
    rt = runtime(ScriptedStore(outcome="created"))
    scraped = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
    batcher = Batcher(rt, clock=lambda: scraped.timestamp() + 2.5)  # committed 2.5 s after the scrape
    count = _sample("matchenv_worker_end_to_end_seconds_count", outcome="created")
    total = _sample("matchenv_worker_end_to_end_seconds_sum", outcome="created")
    batches = _sample("matchenv_worker_batch_size_matches_count")
    assert handle(rt, MATCH, headers={"x-matchenv-scraped-at": scraped.isoformat()}, batcher=batcher) == "ack"
    assert _sample("matchenv_worker_end_to_end_seconds_count", outcome="created") == count + 1
    assert _sample("matchenv_worker_end_to_end_seconds_sum", outcome="created") == pytest.approx(total + 2.5)
    assert _sample("matchenv_worker_newest_stored_scrape_timestamp_seconds") == scraped.timestamp()
    assert _sample("matchenv_worker_batch_size_matches_count") == batches + 1
    older = (scraped - dt.timedelta(hours=1)).isoformat()
    handle(rt, MATCH, headers={"x-matchenv-scraped-at": older}, batcher=batcher)  # a late one: not the newest
    assert _sample("matchenv_worker_newest_stored_scrape_timestamp_seconds") == scraped.timestamp()
    handle(rt, MATCH, batcher=batcher)  # no stamp (an older publisher): stored, not timed
    assert _sample("matchenv_worker_end_to_end_seconds_count", outcome="created") == count + 2


class Channel:
    """A broker channel's view of its deliveries: which are still unacknowledged (AMQP's ``multiple`` ack settles
    every outstanding delivery up to its tag; an ack of a tag not outstanding is a channel error)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.outstanding: set[int] = set()
        self.requeued: list[int] = []
        self.acks = 0  # frames sent

    def deliver(self) -> int:
        self.delivered += 1
        self.outstanding.add(self.delivered)
        return self.delivered

    def settle(self, tag: int, multiple: bool) -> None:
        if tag not in self.outstanding:
            raise RuntimeError(f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        self.outstanding -= {t for t in self.outstanding if t <= tag} if multiple else {tag}


class AckableMessage(TaskMessage):
    """A task message delivered on ``channel`` (a channel of its own by default)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str = "task-1",
                 channel: Channel | None = None) -> None:
        super().__init__(args, kwargs, task_id=task_id)
        self.channel = channel or Channel()
        self.delivery_tag = self.channel.deliver()

    @property
    def acked(self) -> bool:
        return self.delivery_tag not in self.channel.outstanding and self.delivery_tag not in self.channel.requeued

    def ack(self, multiple: bool = False) -> None:
        self.channel.acks += 1
        self.channel.settle(self.delivery_tag, multiple)

    def reject(self, requeue: bool) -> None:
        self.channel.settle(self.delivery_tag, False)
        self.channel.requeued.append(self.delivery_tag)


def test_task_events_tell_flower_what_became_of_each_message_after_it_is_acked() -> None:
    rt = runtime(ScriptedStore(outcome="created"), MATCHENV_TASK_EVENTS="true")
    sent: list[tuple[str, str, str]] = []
    batcher = Batcher(rt)
    batcher.send_event = lambda type_, fields: sent.append(
        (type_, fields["uuid"], str(fields.get("result") or fields.get("exception") or "")))
    good, bad = AckableMessage((MATCH,), {}, task_id="good"), AckableMessage((), {}, task_id="bad")
    batcher.schedule = lambda flush: flush()  # as the consumer's loop would, on the storing thread here
    batcher.submit(good)
    batcher.submit(bad)
    wait_for(lambda: len(sent) >= 4, timeout=10, what="four task events")
    batcher.stop(5)
    assert (good.acked, bad.acked) == (True, True)
    by_task = {u: [(t, told) for t, u2, told in sent if u2 == u] for u in ("good", "bad")}
    assert by_task["good"] == [("task-received", ""), ("task-succeeded", "'created'")]
    [(received, _), (failed, why)] = by_task["bad"]
    assert (received, failed) == ("task-received", "task-failed")
    assert why.startswith("dead-lettered (invalid): expected one match object")


def test_task_events_are_sent_only_when_asked_for_with_heartbeats_and_to_the_environments_exchange() -> None:
    from matchenv.workers.app import create_app

    quiet = WorkerConfig.from_env(ENV)
    assert "--without-heartbeat" in worker_argv(quiet)
    assert "--task-events" not in worker_argv(quiet)
    assert create_app(quiet).conf.worker_send_task_events is False
    told = WorkerConfig.from_env({**ENV, "MATCHENV_TASK_EVENTS": "true"})
    assert "--task-events" in worker_argv(told)
    assert "--without-heartbeat" not in worker_argv(told)
    conf = create_app(told).conf
    assert conf.worker_send_task_events is True
    assert conf.event_exchange == conf.control_exchange == "matches.dev.events"
    assert conf.worker_enable_remote_control is False


def test_after_a_lost_connection_the_node_after_it_is_tried_first() -> None:
    urls = ";".join(f"amqp://u:p@n{i}:5672//" for i in (1, 2, 3))
    for lost, first in ((None, "n1:5672"), ("n1:5672", "n2:5672"), ("n2:5672", "n3:5672"), ("n3:5672", "n1:5672"),
                        ("elsewhere:5672", "n1:5672")):
        conn = Connection(urls)
        after_node(conn, lost)
        assert conn.host == first, lost
        conn.maybe_switch_next()  # the failover goes on around the list from there
        assert conn.host != first
    single = Connection("amqp://u:p@n1:5672//")
    after_node(single, "n1:5672")
    assert single.host == "n1:5672"


class GatedStore(ScriptedStore):
    """Holds its first batch until ``gate`` is set; records the size of each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def upsert_many(self, matches: list[tuple[Match, dt.datetime | None]]) -> list[Outcome]:
        self.sizes.append(len(matches))
        self.gate.wait(10)
        return super().upsert_many(matches)


def test_a_lone_message_is_stored_at_once_and_a_backlog_in_full_batches() -> None:
    store = GatedStore()
    rt = runtime(store)
    batcher = Batcher(rt, max_batch=100, linger=30.0)
    batcher.submit(AckableMessage((MATCH,), {}))  # idle: stored at once, never held for the linger
    wait_for(lambda: store.sizes == [1], timeout=10, what="the lone message's batch")
    batcher.submit(AckableMessage((MATCH,), {}))  # arrives while the first batch is stored: a backlog
    store.gate.set()
    time.sleep(0.2)
    assert store.sizes == [1]  # waiting for its batch to fill
    for _ in range(99):
        batcher.submit(AckableMessage((MATCH,), {}))
    wait_for(lambda: store.sizes == [1, 100], timeout=10, what="a full second batch")
    batcher.submit(AckableMessage((MATCH,), {}))
    started = time.monotonic()
    batcher.stop(5)  # a stop does not wait out the linger; what had not been taken goes back to the queue
    assert time.monotonic() - started < 5
    assert store.sizes == [1, 100]


def test_a_batch_is_acknowledged_with_one_ack_per_run_and_what_goes_back_is_given_back_alone() -> None:
    rt = runtime(ScriptedStore(outcome="created"))
    batcher = Batcher(rt)
    old, new = Channel(), Channel()  # a reconnect between deliveries: the old channel's run is acked on its own
    messages = [AckableMessage((MATCH,), {}, channel=old) for _ in range(3)]
    messages += [AckableMessage((MATCH,), {}, channel=new) for _ in range(5)]
    verdicts: list[tuple[Any, Verdict]] = [(m, "ack") for m in messages]
    verdicts[5] = (messages[5], "requeue")  # e.g. the dead-letter queue was unavailable for it
    batcher._settled.extend(verdicts)
    batcher.flush()
    assert old.outstanding == new.outstanding == set()
    assert (old.acks, new.acks) == (1, 2)  # 3 in one; 2, then (after the one given back) 2 in one
    assert new.requeued == [messages[5].delivery_tag]
    assert [m.acked for m in messages] == [True] * 5 + [False] + [True] * 2


def test_a_message_dead_lettered_after_the_last_stored_one_of_its_batch_is_acknowledged_too() -> None:
    # the feed's order: matches, then one odd message; one batch, one channel. A multiple ack of the last stored
    # match would leave the odd message, delivered after it, unacknowledged until the worker stops: delivered again
    rt = runtime(ScriptedStore(outcome="created"))
    batcher = Batcher(rt)
    channel = Channel()
    batch = [AckableMessage((MATCH,), {}, channel=channel), AckableMessage((MATCH,), {}, channel=channel),
             AckableMessage((), {}, channel=channel)]
    verdicts = batcher.process(batch)
    assert [m for m, _ in verdicts] == batch  # in the order of delivery
    batcher._settled.extend(verdicts)
    batcher.flush()
    assert channel.outstanding == set()
    assert channel.acks == 1
    assert [m.acked for m in batch] == [True] * 3

"""The worker's decisions without a broker: configuration, validation, retries, dead-lettering."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, ClassVar

import pytest
from celery import Celery
from celery.exceptions import Reject

from matchenv.models import Match
from matchenv.workers.app import Runtime, process, scraped_at, worker_argv
from matchenv.workers.config import WorkerConfig, WorkerConfigError
from matchenv.workers.stores import Outcome, StoreUnavailable, TransientStoreError

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

    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome:
        self.calls += 1
        self.stamps.append(scraped_at)
        if self.errors:
            raise self.errors.pop(0)
        return self.outcome

    def close(self) -> None:
        return None


class RecordingRuntime(Runtime):
    letters: list[tuple[Any, str, str]]

    def dead_letter(self, body: Any, reason: str, error: str, **kwargs: Any) -> bool:
        self.letters.append((body, reason, error))
        return bool(self.config.dead_letter_exchange)


def runtime(store: ScriptedStore, **env: str) -> RecordingRuntime:
    config = WorkerConfig.from_env({**ENV, **env})
    stopping = threading.Event()
    stopping.set()  # no real pauses in unit tests
    rt = RecordingRuntime(config=config, app=Celery(set_as_current=False), store_factory=lambda: store,
                          sleep=lambda _s: None, stopping=stopping)
    rt.letters = []
    return rt


class Request:
    id = "task-1"


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
    assert process(rt, (MATCH,), {}, Request()) == "updated"
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
    assert process(rt, args, kwargs, Request()) == "dead-lettered"
    assert len(rt.letters) == 1
    assert rt.letters[0][1] == "invalid"
    assert error in rt.letters[0][2]
    assert store.calls == 0


def test_match_data_keyword_is_accepted() -> None:
    assert process(runtime(ScriptedStore()), (), {"match_data": MATCH}, Request()) == "created"


def test_transient_errors_are_retried_then_succeed() -> None:
    store = ScriptedStore(TransientStoreError("deadlock"), TransientStoreError("deadlock"))
    rt = runtime(store)
    assert process(rt, (MATCH,), {}, Request()) == "created"
    assert store.calls == 3
    assert rt.letters == []


def test_transient_errors_three_times_dead_letter_once() -> None:
    store = ScriptedStore(*(TransientStoreError("serialization failure") for _ in range(3)))
    rt = runtime(store)
    assert process(rt, (MATCH,), {}, Request()) == "dead-lettered"
    assert store.calls == 3
    assert [(r, "after 3 tries" in e) for _, r, e in rt.letters] == [("store-error", True)]


def test_unreachable_database_is_waited_for_never_dead_lettered() -> None:
    store = ScriptedStore(*(StoreUnavailable("down") for _ in range(8)))
    rt = runtime(store)
    assert process(rt, (MATCH,), {}, Request()) == "created"
    assert store.calls == 9
    assert rt.letters == []


def test_worker_uses_threads_and_only_its_queue() -> None:
    argv = worker_argv(WorkerConfig.from_env(ENV, concurrency=4))
    assert "--pool=threads" in argv
    assert "--concurrency=4" in argv
    assert argv[argv.index("--queues") + 1] == "matches.dev"
    assert {"--without-gossip", "--without-mingle", "--without-heartbeat"} <= set(argv)


def test_without_a_dlq_invalid_input_is_dropped_but_a_valid_match_is_never() -> None:
    from matchenv.workers.stores import PermanentStoreError

    rt = runtime(ScriptedStore(PermanentStoreError("constraint")), MATCHENV_DEAD_LETTER_EXCHANGE="")
    assert process(rt, ({"home_team": ""},), {}, Request()) == "dropped"
    with pytest.raises(Reject) as info:
        process(rt, (MATCH,), {}, Request())
    assert info.value.requeue is True  # back to its queue, not acknowledged


def test_an_overlong_text_field_is_invalid_and_named() -> None:
    rt = runtime(ScriptedStore())
    assert process(rt, ({**MATCH, "notes": "x" * (2 * 1024 * 1024)},), {}, Request()) == "dead-lettered"
    (_, reason, error), = rt.letters
    assert reason == "invalid"
    assert error.startswith("notes: String should have at most 2000 characters")


class StampedRequest:
    id = "task-2"
    headers: ClassVar[dict[str, str]] = {"x-matchenv-scraped-at": "2026-11-23T10:00:00+00:00"}


def test_the_publishers_stamp_reaches_the_store() -> None:
    store = ScriptedStore()
    rt = runtime(store)
    process(rt, (MATCH,), {}, StampedRequest())
    process(rt, (MATCH,), {}, Request())
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

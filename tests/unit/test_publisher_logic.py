"""Publisher decisions without a broker: routing priority, validation, retry budget."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from celery.worker.request import Request
from kombu.message import Message as KombuMessage

from matchenv.scraper.messages import TASK_NAME, task_message
from matchenv.scraper.publisher import DEFAULT_EXCHANGE, Publisher, PublishReport, Target, resolve_target, validate
from matchenv.scraper.sources import RawMatch, synthetic


def test_routing_priority_queue_then_exchange_then_default() -> None:
    assert resolve_target("matches.prod", "other") == Target("", "matches.prod")
    assert resolve_target(None, "other") == Target("other", "")
    assert resolve_target(None, None) == Target(DEFAULT_EXCHANGE, "")


def test_protocol2_message_carries_the_task_in_headers() -> None:
    match = next(iter(synthetic(1))).data
    message = task_message(match, task_id="abc")
    assert message.headers["task"] == TASK_NAME
    assert message.headers["id"] == "abc"
    args, kwargs, embed = json.loads(message.body)
    assert args == [match]
    assert kwargs == {}
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}


def test_a_plain_celery_worker_runs_the_task_our_message_names_with_its_match() -> None:
    """What a stock Celery worker makes of the message (its Request, then the task run in-process): the task, its
    id, the match as its one argument, no ETA, expiry or time limit, no retries yet, no result kept."""
    app = Celery(set_as_current=False)
    ran: list[tuple[Any, int]] = []

    @app.task(name=TASK_NAME, bind=True)  # type: ignore[untyped-decorator]
    def process_match_data(self: Any, match_data: dict[str, Any]) -> str:
        ran.append((match_data, self.request.retries))
        return "stored"

    match = next(iter(synthetic(1))).data
    message = task_message(match, task_id="abc")
    request = Request(KombuMessage(body=message.body, content_type="application/json", content_encoding="utf-8",
                                   headers=message.headers, properties={"correlation_id": message.task_id},
                                   delivery_info={"exchange": "matches-fanout", "routing_key": ""}),
                      app=app, task=app.tasks[TASK_NAME])
    assert (request.name, request.id, request.eta, request.expires) == (TASK_NAME, "abc", None, None)
    assert request.time_limits == (None, None)
    assert request.ignore_result is True
    assert request.execute() == "stored"
    assert ran == [(match, 0)]


def test_synthetic_matches_are_stable_and_valid() -> None:
    first = [m.data for m in synthetic(50, seed=1)]
    assert first == [m.data for m in synthetic(50, seed=1)]
    assert len({m["external_match_id"] for m in first}) == 50
    assert all(validate(RawMatch(i, m))[0] is not None for i, m in enumerate(first))
    assert [m.data for m in synthetic(5, seed=1, start=45)] == first[45:]


def test_validation_names_each_bad_field() -> None:
    data, problems = validate(RawMatch(7, {"home_team": "A", "away_team": "B", "match_date": "2025-01-01",
                                           "season": "x", "age_group": "U14", "match_type": "League",
                                           "away_score": -1, "league": "Premier", "external_match_id": "e7"}))
    assert data is None
    assert {(p.field, p.key, p.position) for p in problems} == {("away_score", "e7", 7), ("league", "e7", 7)}


def test_only_what_the_model_reads_is_published() -> None:
    data, problems = validate(RawMatch(1, {"home_team": " A ", "away_team": "B", "match_date": "2025-01-01",
                                           "season": "x", "age_group": "U14", "match_type": "League",
                                           "notes": None, "internal_scraper_cookie": "s3cr3t", "html": "<div>"}))
    assert problems == []
    assert data == {"home_team": "A", "away_team": "B", "match_date": "2025-01-01", "season": "x",
                    "age_group": "U14", "match_type": "League", "notes": None}


def test_exit_codes() -> None:
    assert PublishReport(confirmed=3).exit_code == 0
    assert PublishReport(confirmed=2, unroutable=1).exit_code == 1
    assert PublishReport(confirmed=2, failed=1).exit_code == 1
    assert PublishReport(confirmed=2, invalid_matches=1).exit_code == 3


def test_the_summary_says_how_many_were_sent_again_only_when_some_were() -> None:
    assert "resent" not in PublishReport(confirmed=3).summary()
    resent = PublishReport(confirmed=3, reconnects=1, resent=2)
    assert resent.exit_code == 0  # sent again and confirmed: delivered, perhaps twice (the upsert makes it harmless)
    assert "reconnects 1, resent 2" in resent.summary()


def test_gives_up_after_the_retry_budget() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    publisher = Publisher("amqp://u:p@127.0.0.1:1/%2F", Target("x"), retry_seconds=30, sleep=sleep,
                          clock=lambda: now[0])
    report = publisher.run([RawMatch(1, next(iter(synthetic(1))).data)])
    assert (report.failed, report.confirmed, report.exit_code) == (1, 0, 1)
    assert "gave up after" in report.errors[0]
    assert "cannot connect to the broker: ConnectionRefusedError" in report.errors[0]
    assert 30 <= now[0] < 45
    assert publisher.reconnects >= 4


def test_each_node_of_a_cluster_is_tried_at_once_and_backoff_waits_for_a_full_round(
        caplog: pytest.LogCaptureFixture) -> None:
    now, slept = [0.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    nodes = ";".join(f"amqp://u:p@127.0.0.1:{port}/%2F" for port in (1, 2, 3))  # nothing listens on them
    publisher = Publisher(nodes, Target("x"), retry_seconds=5, sleep=sleep, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="matchenv.scraper"):
        report = publisher.run([RawMatch(1, next(iter(synthetic(1))).data)])
    assert report.failed == 1
    assert slept[:6] == [0.0, 0.0, 0.5, 0.0, 0.0, 1.0]  # the next node at once; backoff after each round of three
    tried = [line.split("reconnecting to ")[1].split(" ")[0] for line in caplog.messages if "reconnecting" in line]
    assert tried[:4] == ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:2"]


def test_a_paced_scrape_keeps_to_its_rate() -> None:
    from matchenv.scraper.publisher import Pace

    now = [100.0]
    pace = Pace(10.0, clock=lambda: now[0])
    assert pace.wait(0) == 0.0  # the first goes at once; the pace counts from it
    assert pace.wait(1) == pytest.approx(0.1)
    now[0] = 104.9
    assert pace.wait(49) == 0.0  # 50 matches at 10/s: the last is due at 4.9 s
    assert pace.wait(50) > 0
    assert Pace(0.0, clock=lambda: 0.0).wait(10_000) == 0.0  # unpaced


def test_each_match_has_a_topic_routing_key_made_of_safe_words() -> None:
    from matchenv.contracts import routing_key

    assert routing_key({"age_group": "U14", "league": "Homegrown", "division": "Northeast"}) == \
        "U14.Homegrown.Northeast"
    assert routing_key({"age_group": "U14 / U15", "league": None, "division": "Div. #1 (A)"}) == \
        "U14-U15.none.Div-1-A"  # no '.', '#' or '*' of its own: a binding like 'U14.#' means what it says
    assert routing_key({}) == "none.none.none"

"""Dead letters as ``matchenv dlq`` reads and redrives them (pure): reasons from the worker or the broker, output
without credentials, and what a redriven message is."""

from __future__ import annotations

import json

import pika

from matchenv.contracts import REDRIVEN_HEADER, SCRAPED_AT_HEADER, TASK_NAME
from matchenv.dlq.letters import DeadLetter, redact


def _letter(body: bytes, content_type: str = "application/json", **headers: object) -> DeadLetter:
    return DeadLetter.from_delivery(pika.BasicProperties(content_type=content_type, headers=headers,
                                                         message_id="m-1"), body)


def test_the_reason_is_the_workers_else_the_brokers_else_unknown() -> None:
    assert _letter(b"{}", **{"x-matchenv-reason": "store-error"}).reason == "store-error"
    expired = _letter(b"{}", **{"x-death": [{"reason": "expired", "queue": "matches.dev", "count": 1,
                                              "time": "2026-01-01T00:00:00Z"}]})
    assert expired.reason == "expired"
    assert expired.dead_lettered_at == "2026-01-01T00:00:00Z"
    assert _letter(b"{}").reason == "unknown"


def test_credentials_never_reach_the_output() -> None:
    error = ("connection to postgresql://matchenv:s3cr3t-pw@db:5432/x failed; password=hunter2 "
             "service_key: eyJhbGciOi routing key U14.#")
    assert redact(error) == ("connection to postgresql://matchenv:***@db:5432/x failed; password=*** "
                             "service_key: *** routing key U14.#")
    letter = _letter(b'{"url": "amqp://admin:admin-pw@rabbitmq:5672/"}', **{"x-matchenv-error": error})
    shown = json.dumps(letter.summary(1000))
    assert "s3cr3t-pw" not in shown
    assert "hunter2" not in shown
    assert "admin-pw" not in shown
    assert len(letter.summary(20)["body"]) < 60  # bounded


def test_a_refused_match_is_redriven_as_a_task_with_its_id_and_its_original_stamp() -> None:
    match = {"home_team": "A", "away_team": "B", "external_match_id": "mlsnext_1"}
    letter = _letter(json.dumps(match).encode(), **{
        "x-matchenv-reason": "store-error", "x-matchenv-error": "CheckViolation", "x-matchenv-task-id": "t-1",
        SCRAPED_AT_HEADER: "2026-01-01T10:00:00+00:00"})
    body, properties = letter.redriven()
    assert json.loads(body)[0] == [match]
    headers = properties.headers
    assert (headers["task"], headers["id"], headers[SCRAPED_AT_HEADER], headers[REDRIVEN_HEADER]) == (
        TASK_NAME, "t-1", "2026-01-01T10:00:00+00:00", 1)
    assert not any(k.startswith("x-matchenv-reason") or k == "x-matchenv-error" for k in headers)
    assert properties.delivery_mode == 2
    again = _letter(body, **{**headers, "x-matchenv-reason": "store-error"})
    assert again.redriven()[1].headers[REDRIVEN_HEADER] == 2
    unstamped = _letter(json.dumps(match).encode(), **{"x-matchenv-reason": "invalid"})
    assert SCRAPED_AT_HEADER not in unstamped.redriven()[1].headers  # an unstamped original stays unstamped


def test_anything_else_goes_back_as_it_came_without_the_dead_letter_headers() -> None:
    raw = b"\x00not json"
    letter = _letter(raw, "application/octet-stream", **{"x-matchenv-reason": "malformed",
                                                          "x-original-content-type": "text/plain", "task": "x"})
    body, properties = letter.redriven()
    assert body == raw
    assert properties.content_type == "text/plain"
    assert properties.headers == {"task": "x", REDRIVEN_HEADER: 1}

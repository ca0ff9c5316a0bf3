"""One dead letter as read from an environment's dead-letter queue, and what redriving it sends (pure).

A dead letter comes from the worker (the ``x-matchenv-reason`` header: ``invalid`` and ``store-error`` carry the
match as received, ``malformed`` and ``unknown-task`` the bytes as received with their headers) or from the broker
through the environment's policy (its ``x-death`` header: the task message itself, untouched).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pika

from matchenv.amqp import encodable_headers
from matchenv.contracts import (
    BROKER_REASONS,
    DEAD_LETTERED_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    REASON_INVALID,
    REASON_STORE_ERROR,
    REDRIVEN_HEADER,
    SCRAPED_AT_HEADER,
    TASK_ID_HEADER,
    WORKER_REASONS,
)
from matchenv.scraper.messages import task_message

UNKNOWN_REASON = "unknown"
KNOWN_REASONS = (*WORKER_REASONS, *BROKER_REASONS, UNKNOWN_REASON)
# what the worker adds when it dead-letters: dropped again on the way back
_DEAD_LETTER_HEADERS = (REASON_HEADER, ERROR_HEADER, QUEUE_HEADER, DEAD_LETTERED_AT_HEADER, TASK_ID_HEADER,
                        "x-original-content-type")
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)([^/\s:@]*):([^/\s@]*)@")
_SECRET_WORDS = re.compile(r"\b(password|passwd|pwd|secret|token|apikey|api_key|service_key)(\s*[=:]\s*)"
                           r"(\"[^\"]*\"|'[^']*'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Text shown to users with credentials taken out: a URL's password, ``password=...`` and the like."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", text)
    return _SECRET_WORDS.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value) if value is not None else ""


@dataclass(frozen=True)
class DeadLetter:
    body: bytes = field(repr=False)
    content_type: str | None
    headers: dict[str, Any]
    message_id: str | None = None

    @classmethod
    def from_delivery(cls, properties: pika.BasicProperties, body: bytes) -> DeadLetter:
        return cls(body, properties.content_type, dict(properties.headers or {}), properties.message_id)

    @property
    def reason(self) -> str:
        """The worker's reason, else the broker's (``x-death``), else ``unknown``."""
        return _text(self.headers.get(REASON_HEADER)) or _text(self._last_death.get("reason")) or UNKNOWN_REASON

    @property
    def error(self) -> str:
        return redact(_text(self.headers.get(ERROR_HEADER)))

    @property
    def dead_lettered_at(self) -> str:
        return _text(self.headers.get(DEAD_LETTERED_AT_HEADER)) or _text(self._last_death.get("time"))

    @property
    def _last_death(self) -> dict[str, Any]:
        """The broker's latest dead-lettering of it (``x-death`` lists the latest first), or {}."""
        deaths = self.headers.get("x-death")
        return deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}

    @property
    def task_id(self) -> str:
        return _text(self.headers.get(TASK_ID_HEADER) or self.headers.get("id") or self.message_id or "")

    def payload(self) -> Any:
        """The JSON the body holds, or None."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def match_id(self) -> str:
        """The match's ``external_match_id`` when the body is a match (the worker's invalid and store-error)."""
        data = self.payload()
        return _text(data.get("external_match_id")) if isinstance(data, dict) else ""

    def preview(self, limit: int) -> str:
        text = redact(self.body.decode(errors="replace"))
        return text if len(text) <= limit else text[:limit] + f"... ({len(self.body)} bytes)"

    def summary(self, limit: int) -> dict[str, Any]:
        """What ``dlq show`` prints of it: never a header it does not know, never a credential."""
        return {"reason": self.reason, "deadLetteredAt": self.dead_lettered_at, "taskId": self.task_id,
                "matchId": self.match_id, "error": self.error[:limit], "body": self.preview(limit)}

    def redriven(self) -> tuple[bytes, pika.BasicProperties]:
        """The message to send back to the environment's queue. A match the worker dead-lettered becomes a task
        message again (same task id, the publisher's original stamp, so an old copy never overwrites newer data);
        anything else goes back as it came, without the dead-letter headers."""
        before = _text(self.headers.get(REDRIVEN_HEADER))
        redriven = int(before) + 1 if before.isdigit() else 1
        if self.reason in (REASON_INVALID, REASON_STORE_ERROR) and self.content_type == "application/json":
            payload = self.payload()
            stamp = _text(self.headers.get(SCRAPED_AT_HEADER))
            message = task_message(payload if isinstance(payload, dict) else {"match": payload},
                                   task_id=self.task_id or str(uuid.uuid4()))
            headers = {**message.headers, REDRIVEN_HEADER: redriven}
            if stamp:
                headers[SCRAPED_AT_HEADER] = stamp
            else:  # an unstamped original (an existing protocol-1 producer) stays unstamped
                headers.pop(SCRAPED_AT_HEADER, None)
            return message.body, pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                                      delivery_mode=2, headers=headers,
                                                      message_id=self.message_id or message.task_id)
        headers = encodable_headers({k: v for k, v in self.headers.items() if k not in _DEAD_LETTER_HEADERS})
        headers[REDRIVEN_HEADER] = redriven
        content_type = _text(self.headers.get("x-original-content-type")) or self.content_type
        return self.body, pika.BasicProperties(content_type=content_type or None, delivery_mode=2, headers=headers,
                                               message_id=self.message_id)

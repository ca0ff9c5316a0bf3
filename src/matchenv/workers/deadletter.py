"""Send a message that cannot be processed to the environment's dead-letter exchange, with the reason attached.

The worker's broker user may write to ``<queue>.dlx`` and nowhere else; the exchange is never declared here (that
would need configure permission), and the channel runs in confirm mode, so a dead-lettered message is on the
broker before the original is acknowledged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from celery import Celery

from matchenv.workers import metrics

log = logging.getLogger("matchenv.worker")

REASON_HEADER = "x-matchenv-reason"
ERROR_HEADER = "x-matchenv-error"


def dead_letter(app: Celery, exchange: str, queue: str, body: bytes | str | dict[str, Any] | list[Any],
                reason: str, error: str, headers: dict[str, Any] | None = None,
                content_type: str = "application/json") -> bool:
    """Publish ``body`` to ``exchange`` with ``reason``/``error`` headers; False if there is no dead-letter exchange."""
    metrics.DEAD_LETTERED.labels(reason=reason).inc()
    if not exchange:
        log.error("no dead-letter exchange configured: dropping a %s message from %s: %s", reason, queue, error)
        return False
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    all_headers = {
        **(headers or {}),
        REASON_HEADER: reason,
        ERROR_HEADER: error[:2000],
        "x-matchenv-queue": queue,
        "x-matchenv-dead-lettered-at": dt.datetime.now(dt.UTC).isoformat(),
    }
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=exchange,
            routing_key=queue,
            headers=all_headers,
            content_type=content_type,
            content_encoding="binary" if content_type == "application/octet-stream" else "utf-8",
            delivery_mode=2,
            declare=[],
            serializer=None,
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.5, "interval_step": 1, "interval_max": 5},
        )
    log.warning("dead-lettered a %s message from %s: %s", reason, queue, error)
    return True

"""Every contract between matchenv's processes, written once: the operator, the workers and the publisher import
their names from here, so the two sides of a contract cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# -- the message (DESIGN §5) -----------------------------------------------------------------------------------
TASK_NAME = "celery_tasks.match_tasks.process_match_data"
DEFAULT_EXCHANGE = "matches-fanout"
QUEUE_PREFIX = "matches."
# When the publisher read the match (RFC 3339, UTC). An AMQP message header, whatever the Celery protocol; the
# upsert never replaces a row with data stamped older than what it holds.
SCRAPED_AT_HEADER = "x-matchenv-scraped-at"

# -- dead letters ----------------------------------------------------------------------------------------------
REASON_HEADER = "x-matchenv-reason"
ERROR_HEADER = "x-matchenv-error"
QUEUE_HEADER = "x-matchenv-queue"
DEAD_LETTERED_AT_HEADER = "x-matchenv-dead-lettered-at"
TASK_ID_HEADER = "x-matchenv-task-id"
REDRIVEN_HEADER = "x-matchenv-redriven"  # how many times ``matchenv dlq redrive`` sent the message back
# Why a message is in a dead-letter queue: the worker's reasons (``REASON_HEADER``) ...
REASON_INVALID = "invalid"  # a task message whose match fails validation (body: the match as received)
REASON_STORE_ERROR = "store-error"  # a valid match the database refused for good (body: the match)
REASON_MALFORMED = "malformed"  # not a task message at all (body: the bytes as received)
REASON_UNKNOWN_TASK = "unknown-task"  # a task of another name (body: the bytes as received)
WORKER_REASONS = (REASON_INVALID, REASON_STORE_ERROR, REASON_MALFORMED, REASON_UNKNOWN_TASK)
# ... and the broker's own (its ``x-death`` header), for what it dead-letters through the environment's policy
BROKER_REASONS = ("rejected", "expired", "maxlen", "delivery_limit")

# -- queues ----------------------------------------------------------------------------------------------------
# The ownership marker: the MatchEnvironment (``namespace/name``) that declared a queue or exchange. Queue
# arguments are fixed at declaration, so the marker survives restarts of the operator and of the broker.
OWNER_ARGUMENT = "x-matchenv-owner"


def owner_id(namespace: str, name: str) -> str:
    """How an owner is written in markers and conditions: ``namespace/name``."""
    return f"{namespace}/{name}"


def routing_key(match: Mapping[str, Any]) -> str:
    """The topic routing key a match is published with (on the fanout, which ignores it; a topic exchange bound to
    it routes by it): ``<age_group>.<league>.<division>``, each word made routing-key safe (letters, digits, '-'
    and '_' kept, every other run of characters one '-'), a missing one ``none``. E.g. ``U14.Homegrown.Northeast``;
    bind ``U14.#`` for every U14 match."""
    def word(value: Any) -> str:
        text = re.sub(r"[^A-Za-z0-9_-]+", "-", str(value or "")).strip("-")
        return text or "none"

    return ".".join(word(match.get(key)) for key in ("age_group", "league", "division"))


def queue_arguments(queue_type: str, owner: str) -> dict[str, Any]:
    """Declare-time arguments of an environment's queue, the same from the operator and the worker: the type and
    the owner (none for a worker run by hand). Everything that may change (length, TTL, dead-lettering, delivery
    limit) goes through the policy instead."""
    return {"x-queue-type": queue_type, OWNER_ARGUMENT: owner} if owner else {"x-queue-type": queue_type}


# -- the worker's environment (set by the operator's Deployment, read by ``matchenv worker``) -------------------
ENV_BROKER_URL = "CELERY_BROKER_URL"
ENV_BROKER_URL_FALLBACK = "RABBITMQ_URL"
ENV_ENVIRONMENT = "MATCHENV_ENVIRONMENT"
ENV_OWNER = "MATCHENV_OWNER"
ENV_QUEUE = "MATCHENV_QUEUE"
ENV_QUEUE_TYPE = "MATCHENV_QUEUE_TYPE"
ENV_DEAD_LETTER_EXCHANGE = "MATCHENV_DEAD_LETTER_EXCHANGE"
ENV_METRICS_PORT = "MATCHENV_METRICS_PORT"
ENV_CONCURRENCY = "MATCHENV_CONCURRENCY"
ENV_PREFETCH = "MATCHENV_PREFETCH"
ENV_DATABASE_URL = "DATABASE_URL"
ENV_MIGRATE = "MATCHENV_MIGRATE"
ENV_SUPABASE_URL = "SUPABASE_URL"
ENV_SUPABASE_KEYS = ("SUPABASE_SERVICE_KEY", "SUPABASE_KEY")
WORKER_METRICS_PORT = 9808

# -- Secrets ---------------------------------------------------------------------------------------------------
# the broker admin connection (the operator's own, or an environment's ``broker.connectionSecretRef``)
BROKER_ADMIN_KEYS = ("url", "management-url", "username", "password")
# the worker's ``<env>-broker`` Secret
WORKER_SECRET_URL = "url"
WORKER_SECRET_USERNAME = "username"
WORKER_SECRET_PASSWORD = "password"
# a database Secret needs one of these key sets
DATABASE_KEY_SETS = ((ENV_DATABASE_URL,), (ENV_SUPABASE_URL, "SUPABASE_KEY"),
                     (ENV_SUPABASE_URL, "SUPABASE_SERVICE_KEY"))

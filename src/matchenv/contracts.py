"""Every contract between matchenv's processes, written once: the operator, the workers and the publisher import
their names from here, so the two sides of a contract cannot drift apart.
"""

from __future__ import annotations

import functools
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
# The ownership marker: the MatchEnvironment (``cluster/namespace/name``) that declared a queue or exchange. Queue
# arguments are fixed at declaration, so the marker survives restarts of the operator and of the broker. Versions
# before the cluster identity wrote ``namespace/name`` (a legacy marker): their cluster adopts it on upgrade.
OWNER_ARGUMENT = "x-matchenv-owner"


# Names matchenv derives from a queue (``<queue>.dlq`` ...) or an exchange (``<exchange>.topic`` ...). No
# environment's queue may carry one: its user's permissions (regexes over queues *and* exchanges) would reach an
# object another environment owns, or the shared feed's.
DLQ_SUFFIX, DLX_SUFFIX, BACKFILL_SUFFIX = ".dlq", ".dlx", ".backfill"
TOPIC_SUFFIX, ARCHIVE_SUFFIX, EVENTS_SUFFIX = ".topic", ".archive", ".events"
DERIVED_SUFFIXES = (DLQ_SUFFIX, DLX_SUFFIX, BACKFILL_SUFFIX, TOPIC_SUFFIX, ARCHIVE_SUFFIX, EVENTS_SUFFIX)


def split_urls(urls: str) -> list[str]:
    """The URLs of a ``;``-separated list (blanks dropped); one URL is a list of one."""
    return [url.strip() for url in urls.split(URL_SEPARATOR) if url.strip()]


def derived_suffix(name: str) -> str | None:
    """The suffix of a name matchenv derives that ``name`` ends with, or None."""
    return next((suffix for suffix in DERIVED_SUFFIXES if name.endswith(suffix)), None)


def owner_id(cluster: str, namespace: str, name: str) -> str:
    """How an owner is written in markers: ``cluster/namespace/name``."""
    return f"{cluster}/{namespace}/{name}"


def legacy_owner_id(namespace: str, name: str) -> str:
    """The marker versions before the cluster identity wrote: ``namespace/name`` (no cluster in it)."""
    return f"{namespace}/{name}"


def names_cluster(marker: str | None) -> bool:
    """Whether a marker is ``cluster/namespace/name`` (else: none, or a legacy ``namespace/name``)."""
    return marker is not None and marker.count("/") == 2


def owner_namespace(marker: str | None) -> str | None:
    """The namespace a marker names (``cluster/namespace/name`` or a legacy ``namespace/name``), if any."""
    parts = (marker or "").split("/")
    return parts[-2] if len(parts) in (2, 3) and parts[-2] else None


def describe_owner(marker: str) -> str:
    """A marker in words, for conditions and events: whose environment, of which cluster."""
    parts = marker.split("/")
    if names_cluster(marker):
        return f"MatchEnvironment {parts[1]}/{parts[2]} of cluster {parts[0]}"
    return f"MatchEnvironment {marker} (of a cluster that has not run this version yet)"


def routing_key(match: Mapping[str, Any]) -> str:
    """The topic routing key a match is published with (on the fanout, which ignores it; a topic exchange bound to
    it routes by it): ``<age_group>.<league>.<division>``, each word made routing-key safe (letters, digits, '-'
    and '_' kept, every other run of characters one '-'), a missing one ``none``. E.g. ``U14.Homegrown.Northeast``;
    bind ``U14.#`` for every U14 match."""
    return ".".join(_routing_word(str(match.get(key) or "")) for key in ("age_group", "league", "division"))


@functools.lru_cache(maxsize=1024)
def _routing_word(value: str) -> str:
    """One word of a routing key (a feed has few distinct ones: cached, bounded)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", value).strip("-") or "none"


def events_exchange(queue: str) -> str:
    """The topic exchange an environment's workers send their Celery task events to (``spec.workers.taskEvents``),
    and the prefix of everything its Flower declares: Celery's ``event_exchange``, ``event_queue_prefix`` and
    ``control_exchange`` alike (its broadcasts go to ``<queue>.events.pidbox``, which no worker reads)."""
    return f"{queue}{EVENTS_SUFFIX}"


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
ENV_TASK_EVENTS = "MATCHENV_TASK_EVENTS"  # "true": send Celery task events to events_exchange(queue)
ENV_EVENTS_EXCHANGE = "MATCHENV_EVENTS_EXCHANGE"  # ``matchenv flower``: the exchange to read them from
ENV_DATABASE_URL = "DATABASE_URL"
ENV_MIGRATE = "MATCHENV_MIGRATE"
ENV_SUPABASE_URL = "SUPABASE_URL"
ENV_SUPABASE_KEYS = ("SUPABASE_SERVICE_KEY", "SUPABASE_KEY")
WORKER_METRICS_PORT = 9808

# -- Secrets ---------------------------------------------------------------------------------------------------
# the broker admin connection (the operator's own, or an environment's ``broker.connectionSecretRef``)
BROKER_ADMIN_KEYS = ("url", "management-url", "username", "password")
# A broker cluster's nodes: ``url`` and ``management-url`` (and every AMQP URL a worker, the publisher or a tool is
# given) may list several, separated by this (Celery's own failover form); a client tries them in order and moves
# to the next when one cannot be reached.
URL_SEPARATOR = ";"
# the worker's ``<env>-broker`` Secret
WORKER_SECRET_URL = "url"
WORKER_SECRET_USERNAME = "username"
WORKER_SECRET_PASSWORD = "password"
# ... and the events Secret ``<env>-events`` (Flower's, when the workers send task events) has those three and this
EVENTS_SECRET_EXCHANGE = "events-exchange"
# a database Secret needs one of these key sets
DATABASE_KEY_SETS = ((ENV_DATABASE_URL,), (ENV_SUPABASE_URL, "SUPABASE_KEY"),
                     (ENV_SUPABASE_URL, "SUPABASE_SERVICE_KEY"))

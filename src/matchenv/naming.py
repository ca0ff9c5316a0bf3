"""Every name matchenv derives from one MatchEnvironment, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from matchenv.contracts import owner_id
from matchenv.models import API_GROUP

MANAGED_BY = "matchenv"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ENV_LABEL = f"{API_GROUP}/environment"
COMPONENT_LABEL = "app.kubernetes.io/component"
WORKER_COMPONENT = "worker"
BACKFILL_COMPONENT = "backfill"
SECRETS_HASH_ANNOTATION = f"{API_GROUP}/secrets-hash"
# on the MatchEnvironment: the worker count the autoscaler last wrote; a spec.workers.replicas that differs was set by
# someone else (kubectl scale, an apply of a file that names replicas)
AUTOSCALED_ANNOTATION = f"{API_GROUP}/autoscaled-replicas"
POLICY_PRIORITY = 100


def broker_regex(name: str) -> str:
    """An anchored Erlang regex matching exactly ``name`` (queue names may contain dots)."""
    return "^" + re.sub(r"([.^$|()\[\]{}*+?\\])", r"\\\1", name) + "$"


BROKER_USER_PREFIX = "matchenv."


def broker_user_name(namespace: str, name: str) -> str:
    """The environment's own broker user. Namespaces hold no dots, so the owner can be read back from it."""
    return f"{BROKER_USER_PREFIX}{namespace}.{name}"


def owner_of_broker_user(user: str) -> str | None:
    """``namespace/name`` of the MatchEnvironment whose broker user ``user`` is, or None for other users."""
    if not user.startswith(BROKER_USER_PREFIX):
        return None
    namespace, _, name = user.removeprefix(BROKER_USER_PREFIX).partition(".")
    return owner_id(namespace, name) if namespace and name else None


PUBLISHER_USER_PREFIX = "matchenv-publisher."


def publisher_user_name(operator_namespace: str) -> str:
    """The publish-only broker user one operator keeps for the scraper (never an environment's: other prefix)."""
    return f"{PUBLISHER_USER_PREFIX}{operator_namespace}"


def subset_exchange_name(exchange: str) -> str:
    """The topic exchange bound to the fanout ``exchange`` that environments with ``queue.routingKeys`` bind to:
    one per fanout exchange, shared by them all, never deleted by one of them."""
    return f"{exchange}.topic"


def archive_name(exchange: str) -> str:
    """The stream bound to ``exchange`` that keeps every match published to it, for backfills (one per exchange,
    shared, never deleted by an environment)."""
    return f"{exchange}.archive"


def archive_policy_name(exchange: str) -> str:
    return f"matchenv.{archive_name(exchange)}"


BACKFILL_USER_PREFIX = "matchenv-backfill."


def broker_secret_name(environment: str) -> str:
    """Secret ``<env>-broker``: the worker's AMQP URL (it does not depend on the queue name)."""
    return f"{environment}-broker"


@dataclass(frozen=True)
class EnvironmentNames:
    """Names of what the operator owns for the MatchEnvironment ``namespace/name`` whose queue is ``queue``."""

    namespace: str
    name: str
    queue: str

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dlq"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.queue}.dlx"

    @property
    def policy(self) -> str:
        return f"matchenv.{self.queue}"

    @property
    def owner(self) -> str:
        """The ownership marker of everything this environment declares: ``namespace/name``."""
        return owner_id(self.namespace, self.name)

    @property
    def broker_user(self) -> str:
        return broker_user_name(self.namespace, self.name)

    @property
    def broker_secret(self) -> str:
        return broker_secret_name(self.name)

    @property
    def backfill_exchange(self) -> str:
        """Where the backfill Job publishes archived matches: bound to this environment's queue only."""
        return f"{self.queue}.backfill"

    @property
    def backfill_user(self) -> str:
        """The backfill Job's broker user: reads the archive, writes the backfill exchange, nothing else."""
        return f"{BACKFILL_USER_PREFIX}{self.namespace}.{self.name}"

    @property
    def backfill_secret(self) -> str:
        return f"{self.name}-backfill"

    def backfill_job(self, request: str, attempt: int) -> str:
        return f"{self.name[:40]}-backfill-{request[:8]}-{attempt}"  # a Job's name is a label value: 63 at most

    @property
    def deployment(self) -> str:
        return f"{self.name}-workers"

    @property
    def selector_labels(self) -> dict[str, str]:
        return {ENV_LABEL: self.name, COMPONENT_LABEL: WORKER_COMPONENT}

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.selector_labels,
            "app.kubernetes.io/name": "matchenv",
            "app.kubernetes.io/instance": self.name,
            MANAGED_BY_LABEL: MANAGED_BY,
        }

    @property
    def selector(self) -> str:
        """The label selector string for ``status.selector`` (scale subresource)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector_labels.items()))

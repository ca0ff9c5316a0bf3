"""Every name matchenv derives from one MatchEnvironment, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from matchenv.api import API_GROUP
from matchenv.contracts import (
    ARCHIVE_SUFFIX,
    BACKFILL_SUFFIX,
    DLQ_SUFFIX,
    DLX_SUFFIX,
    TOPIC_SUFFIX,
    events_exchange,
    legacy_owner_id,
    owner_id,
)

MANAGED_BY = "matchenv"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ENV_LABEL = f"{API_GROUP}/environment"
COMPONENT_LABEL = "app.kubernetes.io/component"
WORKER_COMPONENT = "worker"
BACKFILL_COMPONENT = "backfill"
REPLAY_LABEL = "matchenv.io/replay"  # on a replay Job: "backfill" (spec.backfill; also when absent) or "catch-up"
EVENTS_COMPONENT = "events"  # the Secret Flower reads an environment's task events with
SECRETS_HASH_ANNOTATION = f"{API_GROUP}/secrets-hash"
# on the MatchEnvironment: the worker count the autoscaler last wrote; a spec.workers.replicas that differs was set by
# someone else (kubectl scale, an apply of a file that names replicas)
AUTOSCALED_ANNOTATION = f"{API_GROUP}/autoscaled-replicas"
POLICY_PRIORITY = 100
LEGACY_LENGTH_CAP_POLICY = "matchenv.max-length"  # before the cluster identity


def length_cap_policy_name(cluster: str) -> str:
    """The operator policy with one cluster's administrator's maximum queue length (one per cluster and vhost)."""
    return f"matchenv.max-length.{cluster}"


def broker_regex(name: str) -> str:
    """An anchored Erlang regex matching exactly ``name`` (queue names may contain dots)."""
    return "^" + re.sub(r"([.^$|()\[\]{}*+?\\])", r"\\\1", name) + "$"


# The cluster identity: MATCHENV_CLUSTER_ID, else the start of the kube-system namespace's UID. It is part of every
# marker and user name the operator makes, so two clusters' ``default/prod`` never meet on one broker.
CLUSTER_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"


def cluster_id_from_uid(uid: str) -> str:
    """A cluster's identity from its ``kube-system`` namespace's UID: the UID's first group (8 hex digits)."""
    return uid.split("-")[0].lower()


ENV_USER_PREFIX = "matchenv-env."
# the worker's second user: a rotation switches to the other one with a new password, so the pods still running with
# the last Secret keep a user that works until none is left (then it goes)
ALT_ENV_USER_PREFIX = "matchenv-env-b."
LEGACY_USER_PREFIX = "matchenv."  # before the cluster identity: ``matchenv.<namespace>.<name>``


def broker_user_name(cluster: str, namespace: str, name: str, alternate: bool = False) -> str:
    """The environment's own broker user (``alternate``: its second, see ``ALT_ENV_USER_PREFIX``). Cluster identities
    and namespaces hold no dots, so the owner can be read back from it."""
    return f"{ALT_ENV_USER_PREFIX if alternate else ENV_USER_PREFIX}{cluster}.{namespace}.{name}"


def legacy_broker_user_name(namespace: str, name: str) -> str:
    """The environment's broker user as versions before the cluster identity named it."""
    return f"{LEGACY_USER_PREFIX}{namespace}.{name}"


def owner_of_broker_user(user: str) -> str | None:
    """The marker (``cluster/namespace/name``, or a legacy ``namespace/name``) of the MatchEnvironment whose broker
    user ``user`` is, or None for other users."""
    prefix = next((p for p in (ENV_USER_PREFIX, ALT_ENV_USER_PREFIX) if user.startswith(p)), None)
    if prefix is not None:
        cluster, _, rest = user.removeprefix(prefix).partition(".")
        namespace, _, name = rest.partition(".")
        return owner_id(cluster, namespace, name) if cluster and namespace and name else None
    if user.startswith(LEGACY_USER_PREFIX):
        namespace, _, name = user.removeprefix(LEGACY_USER_PREFIX).partition(".")
        return legacy_owner_id(namespace, name) if namespace and name else None
    return None


PUBLISHER_USER_PREFIX = "matchenv-publisher."


def publisher_user_name(cluster: str, operator_namespace: str) -> str:
    """The publish-only broker user one operator keeps for the scraper (never an environment's: other prefix)."""
    return f"{PUBLISHER_USER_PREFIX}{cluster}.{operator_namespace}"


def legacy_publisher_user_name(operator_namespace: str) -> str:
    """The publisher user as versions before the cluster identity named it."""
    return f"{PUBLISHER_USER_PREFIX}{operator_namespace}"


def subset_exchange_name(exchange: str) -> str:
    """The topic exchange bound to the fanout ``exchange`` that environments with ``queue.routingKeys`` bind to:
    one per fanout exchange, shared by them all, never deleted by one of them."""
    return f"{exchange}{TOPIC_SUFFIX}"


def archive_name(exchange: str) -> str:
    """The stream bound to ``exchange`` that keeps every match published to it, for backfills (one per exchange,
    shared, never deleted by an environment)."""
    return f"{exchange}{ARCHIVE_SUFFIX}"


def archive_policy_name(exchange: str) -> str:
    return f"matchenv.{archive_name(exchange)}"


BACKFILL_USER_PREFIX = "matchenv-backfill."
EVENTS_USER_PREFIX = "matchenv-events."


def broker_secret_name(environment: str) -> str:
    """Secret ``<env>-broker``: the worker's AMQP URL (it does not depend on the queue name)."""
    return f"{environment}-broker"


@dataclass(frozen=True)
class EnvironmentNames:
    """Names of what the operator of ``cluster`` owns for its MatchEnvironment ``namespace/name`` whose queue is
    ``queue``."""

    cluster: str
    namespace: str
    name: str
    queue: str

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}{DLQ_SUFFIX}"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.queue}{DLX_SUFFIX}"

    @property
    def policy(self) -> str:
        return f"matchenv.{self.queue}"

    @property
    def owner(self) -> str:
        """The ownership marker of everything this environment declares: ``cluster/namespace/name``."""
        return owner_id(self.cluster, self.namespace, self.name)

    @property
    def legacy_owner(self) -> str:
        """The marker versions before the cluster identity declared its objects with: ``namespace/name``."""
        return legacy_owner_id(self.namespace, self.name)

    @property
    def broker_user(self) -> str:
        return broker_user_name(self.cluster, self.namespace, self.name)

    @property
    def worker_users(self) -> tuple[str, str]:
        """The worker's two broker users: a rotation switches from one to the other."""
        return self.broker_user, broker_user_name(self.cluster, self.namespace, self.name, alternate=True)

    def worker_user_named(self, username: str) -> str:
        """Which of the worker's two users a Secret's ``username`` is (anything else, or none: the first)."""
        return username if username in self.worker_users else self.broker_user

    def other_worker_user(self, user: str) -> str:
        first, second = self.worker_users
        return second if user == first else first

    @property
    def legacy_users(self) -> tuple[str, str]:
        """Its worker's and backfill's broker users as versions before the cluster identity named them."""
        return (legacy_broker_user_name(self.namespace, self.name),
                f"{BACKFILL_USER_PREFIX}{self.namespace}.{self.name}")

    @property
    def broker_secret(self) -> str:
        return broker_secret_name(self.name)

    @property
    def backfill_exchange(self) -> str:
        """Where the backfill Job publishes archived matches: bound to this environment's queue only."""
        return f"{self.queue}{BACKFILL_SUFFIX}"

    @property
    def backfill_user(self) -> str:
        """The backfill Job's broker user: reads the archive, writes the backfill exchange, nothing else."""
        return f"{BACKFILL_USER_PREFIX}{self.cluster}.{self.namespace}.{self.name}"

    @property
    def backfill_secret(self) -> str:
        return f"{self.name}-backfill"

    @property
    def events_exchange(self) -> str:
        """Where the workers send Celery task events (``spec.workers.taskEvents``); Flower's names start with it."""
        return events_exchange(self.queue)

    @property
    def events_user(self) -> str:
        """Flower's broker user: reads the task events, nothing else."""
        return f"{EVENTS_USER_PREFIX}{self.cluster}.{self.namespace}.{self.name}"

    @property
    def events_secret(self) -> str:
        return f"{self.name}-events"

    def backfill_job(self, request: str, attempt: int) -> str:
        return f"{self.name[:40]}-backfill-{request[:8]}-{attempt}"  # a Job's name is a label value: 63 at most

    def catch_up_job(self, request: str, attempt: int) -> str:
        return f"{self.name[:40]}-catch-up-{request[:8]}-{attempt}"

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

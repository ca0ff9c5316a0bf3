"""The MatchEnvironment custom resource's types (its API): spec, status and their parts, as pydantic models.

The CRD in ``crds/`` is generated from these models (``matchenv crd``), so field names, defaults, enums, bounds and
descriptions have one source. Cross-field rules are written twice, as Python validators here and as CEL rules in
``x-kubernetes-validations`` for the API server; tests feed the same invalid objects to both.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from matchenv.contracts import DEFAULT_EXCHANGE as DEFAULT_EXCHANGE
from matchenv.contracts import DERIVED_SUFFIXES, derived_suffix
from matchenv.contracts import QUEUE_PREFIX as QUEUE_PREFIX

API_GROUP = "matchenv.io"
API_VERSION = "v1alpha1"
KIND = "MatchEnvironment"
PLURAL = "matchenvironments"
SINGULAR = "matchenvironment"
SHORT_NAMES = ("menv",)
CATEGORIES = ("matchenv",)

# An environment's name becomes part of Deployment, Secret and broker user names; keep room for their suffixes.
MAX_ENVIRONMENT_NAME = 40

# Both Python's re and Go's RE2 (the API server) accept these patterns.
BROKER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ENV_VAR_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

BrokerName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=BROKER_NAME_PATTERN)]
K8sName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=K8S_NAME_PATTERN)]


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields refused (the API server prunes them; we must not guess)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", use_enum_values=False)


class ExchangeType(StrEnum):
    FANOUT = "fanout"
    TOPIC = "topic"


class QueueType(StrEnum):
    CLASSIC = "classic"
    QUORUM = "quorum"


class Overflow(StrEnum):
    DROP_HEAD = "drop-head"
    REJECT_PUBLISH = "reject-publish"
    REJECT_PUBLISH_DLX = "reject-publish-dlx"


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"
    DRAIN = "Drain"


class AfterDrain(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class PauseMode(StrEnum):
    HOLD = "Hold"
    UNBIND = "Unbind"


class ExpireFrom(StrEnum):
    CREATION = "Creation"
    LAST_CHANGE = "LastChange"


GO_DURATION = r"^([0-9]+(h|m|s))+$"  # as Kubernetes and CEL's duration() write them: '30s', '72h', '1h30m'
_UNITS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> int:
    """Seconds in a duration such as '30s', '72h' or '1h30m' (:data:`GO_DURATION`)."""
    if not re.fullmatch(GO_DURATION, text):
        raise ValueError(f"not a duration like '30s', '72h' or '1h30m': {text!r}")
    return sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"([0-9]+)([hms])", text))


class Phase(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    DEGRADED = "Degraded"
    DELETING = "Deleting"
    PAUSED = "Paused"


class ExchangeSpec(_Model):
    """The exchange the scraper publishes to; shared by every environment and never deleted by one of them."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!self.name.startsWith('amq.')", "exchange.name must not start with 'amq.' (reserved by RabbitMQ)",
                    ".name"),
            ]
        }
    )

    name: BrokerName = Field(DEFAULT_EXCHANGE, description="Name of the exchange matches are published to.")
    type: ExchangeType = Field(
        ExchangeType.FANOUT,
        description="Exchange type: 'fanout' sends every match to every bound queue; 'topic' routes by "
        "queue.routingKeys.",
    )

    @model_validator(mode="after")
    def _not_reserved(self) -> ExchangeSpec:
        if self.name.startswith("amq."):
            raise ValueError("exchange.name must not start with 'amq.' (reserved by RabbitMQ)")
        return self


DERIVED_NAME_MESSAGE = (f"queue.name must not end with {', '.join(DERIVED_SUFFIXES)}: matchenv derives those names "
                        "for its own objects (dead-letter queues and exchanges, backfill, subset, archive and "
                        "task-event exchanges), and a queue of such a name would give its user rights on them")


class QueueSpec(_Model):
    """This environment's durable queue, bound to the exchange."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.name) || !self.name.startsWith('amq.')",
                    "queue.name must not start with 'amq.' (reserved by RabbitMQ)", ".name"),
                cel("!has(self.name) || !(" + " || ".join(f"self.name.endsWith('{s}')" for s in DERIVED_SUFFIXES)
                    + ")", DERIVED_NAME_MESSAGE, ".name"),
                cel("!has(self.name) || !has(oldSelf.name) || self.name == oldSelf.name",
                    "queue.name is immutable: create a new MatchEnvironment for a new queue", ".name"),
                cel("self.type == oldSelf.type",
                    "queue.type is immutable: RabbitMQ cannot change the type of a live queue", ".type"),
                cel("!has(self.overflow) || has(self.maxLength)",
                    "queue.overflow needs queue.maxLength: it says what happens beyond that length", ".overflow"),
            ]
        }
    )

    name: BrokerName | None = Field(
        None,
        description="Queue name. Defaults to 'matches.<metadata.name>'. Immutable once set.",
    )
    type: QueueType = Field(
        QueueType.CLASSIC,
        description="Queue type: 'classic' or 'quorum' (replicated). Immutable.",
    )
    routing_keys: list[Annotated[str, StringConstraints(max_length=255)]] | None = Field(
        None,
        alias="routingKeys",
        max_length=32,
        description="Topic binding keys, one binding each (e.g. 'U14.#' against the published key "
        "'<age_group>.<league>.<division>'). With a fanout exchange the queue receives only the matching part of "
        "the feed, through the topic exchange '<exchange.name>.topic' that the operator binds to the fanout "
        "(messages published with an empty routing key do not reach it). With a topic exchange they are the "
        "queue's bindings to it, and at least one is required.",
    )
    max_length: int | None = Field(
        None,
        alias="maxLength",
        ge=1,
        description="Most messages the queue holds; the oldest are dropped (dead-lettered if deadLetter is "
        "on) beyond it. Applied through a policy, so changes take effect on the live queue.",
    )
    overflow: Overflow | None = Field(
        None,
        description="What happens beyond maxLength: 'drop-head' (the broker's default: the oldest go, "
        "dead-lettered if deadLetter is on), 'reject-publish' (new messages are refused: the publisher sees them "
        "fail and reports them) or 'reject-publish-dlx' (refused, and dead-lettered). Applied through the policy.",
    )
    message_ttl_seconds: int | None = Field(
        None,
        alias="messageTTLSeconds",
        ge=1,
        le=31_536_000,
        description="Seconds a message may wait in the queue before it expires (dead-lettered if deadLetter "
        "is on). Applied through a policy.",
    )
    dead_letter: bool = Field(
        True,
        alias="deadLetter",
        description="Keep a dead-letter queue '<queue>.dlq' behind a per-environment dead-letter exchange for "
        "malformed, expired and failed messages. Without it, invalid messages are counted and dropped, and a "
        "valid match that cannot be stored stays in the queue.",
    )
    delivery_limit: int = Field(
        20,
        alias="deliveryLimit",
        ge=1,
        le=1000,
        description="Quorum queues with deadLetter on: deliveries after which a message that keeps failing (e.g. "
        "one that makes the worker process exit) goes to the dead-letter queue with reason 'delivery_limit'. "
        "Applied through the policy. Without deadLetter a message is never dropped (on RabbitMQ 4 the policy lifts "
        "its default limit of 20). Classic queues have no delivery count: there the worker's own retries and "
        "dead-lettering bound it.",
    )
    adopt: bool = Field(
        False,
        description="Take over a queue of this name that exists but was not made by matchenv (a hand-wired one), "
        "keeping its messages. Without it such a queue is refused with reason QueueExists.",
    )

    @model_validator(mode="after")
    def _overflow(self) -> QueueSpec:
        if self.name is not None and derived_suffix(self.name):
            raise ValueError(DERIVED_NAME_MESSAGE)
        if self.overflow is not None and self.max_length is None:
            raise ValueError("queue.overflow needs queue.maxLength: it says what happens beyond that length")
        return self

    def resolved_name(self, environment: str) -> str:
        """The queue's name: the one given, else ``matches.<environment>``."""
        return self.name or f"{QUEUE_PREFIX}{environment}"


class SecretRef(_Model):
    """A reference to a Secret in the MatchEnvironment's namespace."""

    name: K8sName = Field(..., description="Name of the Secret.")


class KeyRef(_Model):
    """A key of a Secret or ConfigMap in the environment's namespace."""

    name: K8sName = Field(..., description="Name of the Secret or ConfigMap.")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(..., description="The key.")
    optional: bool | None = Field(None, description="Whether the Secret/ConfigMap or its key may be missing.")


class FieldRef(_Model):
    """A field of the worker pod, e.g. metadata.name."""

    field_path: Annotated[str, StringConstraints(min_length=1)] = Field(
        ..., alias="fieldPath", description="Path of the field, e.g. metadata.name or status.podIP."
    )
    api_version: str | None = Field(None, alias="apiVersion", description="Version of the schema of fieldPath.")


QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)],
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]


class ResourceFieldRef(_Model):
    """A resource of the worker container, e.g. limits.memory."""

    resource: Annotated[str, StringConstraints(min_length=1)] = Field(..., description="e.g. limits.cpu.")
    container_name: str | None = Field(None, alias="containerName", description="Container name.")
    divisor: Quantity | None = Field(None, description="Output unit, e.g. 1Mi.")


_ONE_SOURCE = "valueFrom needs exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef"


class EnvVarSource(_Model):
    """Where an environment variable's value comes from, as in a Pod spec: exactly one source."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), "
                    "has(self.resourceFieldRef)].filter(x, x).size() == 1", _ONE_SOURCE),
            ]
        }
    )

    secret_key_ref: KeyRef | None = Field(None, alias="secretKeyRef", description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(None, alias="configMapKeyRef", description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(None, alias="fieldRef", description="A field of the pod.")
    resource_field_ref: ResourceFieldRef | None = Field(None, alias="resourceFieldRef",
                                                        description="A resource of the container.")

    @model_validator(mode="after")
    def _one(self) -> EnvVarSource:
        sources = [self.secret_key_ref, self.config_map_key_ref, self.field_ref, self.resource_field_ref]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(_ONE_SOURCE)
        return self


_VALUE_OR_FROM = "an env entry takes value or valueFrom, not both"


class EnvVar(_Model):
    """An extra environment variable for the worker container, as in a Pod spec."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel("!(has(self.value) && has(self.valueFrom))", _VALUE_OR_FROM)]
        }
    )

    name: Annotated[str, StringConstraints(min_length=1, pattern=ENV_VAR_NAME_PATTERN)] = Field(
        ..., description="Variable name."
    )
    value: str | None = Field(None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        None, alias="valueFrom", description="Source for the value (secretKeyRef, configMapKeyRef, fieldRef, "
        "resourceFieldRef), as in a Pod spec."
    )

    @model_validator(mode="after")
    def _value_or_from(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(_VALUE_OR_FROM)
        return self


class ResourceRequirements(_Model):
    """CPU and memory for each worker container, as in a Pod spec."""

    limits: dict[str, Quantity] | None = Field(None, description="Maximum resources, e.g. {cpu: '1', memory: 512Mi}.")
    requests: dict[str, Quantity] | None = Field(None, description="Guaranteed resources, e.g. {cpu: 100m}.")


class Toleration(_Model):
    """A toleration for the worker pods, as in a Pod spec."""

    key: str | None = Field(None, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="'Exists' or 'Equal' (default).")
    value: str | None = Field(None, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, alias="tolerationSeconds", description="For NoExecute: how long the pod stays bound after the taint."
    )


class WorkersSpec(_Model):
    """The Celery worker Deployment that consumes this environment's queue."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        ..., description="Container image of the worker (runs 'matchenv worker')."
    )
    replicas: int = Field(
        2,
        ge=0,
        le=1000,
        description="Number of worker pods. The scale subresource points here. With autoscaling enabled the "
        "autoscaler owns it: a value set by hand (kubectl scale) is put back, with an Event and status.autoscaling "
        "saying so.",
    )
    concurrency: int = Field(1, ge=1, le=64, description="Celery worker processes per pod.")
    task_events: bool = Field(
        False,
        alias="taskEvents",
        description="Send Celery task and heartbeat events, for Flower, to this environment's own exchange "
        "<queue>.events: the workers' broker user gets exactly that right more, and the operator keeps a second "
        "user that can only read those events, in Secret <name>-events (keys url, username, password, "
        "events-exchange) for a Flower Deployment ('matchenv flower'). Off: no events, no such user.",
    )
    database_secret_ref: SecretRef = Field(
        ...,
        alias="databaseSecretRef",
        description="Secret with this environment's database credentials: keys SUPABASE_URL and SUPABASE_KEY "
        "(or SUPABASE_SERVICE_KEY), or DATABASE_URL for plain Postgres.",
    )
    env: list[EnvVar] | None = Field(None, max_length=64, description="Extra environment variables for the worker.")
    resources: ResourceRequirements | None = Field(None, description="Compute resources of each worker container.")
    node_selector: dict[str, str] | None = Field(
        None, alias="nodeSelector", description="Node labels the worker pods must be scheduled on."
    )
    tolerations: list[Toleration] | None = Field(None, max_length=32, description="Tolerations of the worker pods.")


class AutoscalingSpec(_Model):
    """Scale workers with the queue's backlog (ready plus unacknowledged messages)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must be <= maxReplicas",
                    ".minReplicas"),
            ]
        }
    )

    enabled: bool = Field(False, description="Turn backlog-based autoscaling on.")
    min_replicas: int = Field(
        1, alias="minReplicas", ge=0, le=1000, description="Fewest worker pods; 0 scales to zero when idle."
    )
    max_replicas: int = Field(10, alias="maxReplicas", ge=1, le=1000, description="Most worker pods.")
    messages_per_replica: int = Field(
        100, alias="messagesPerReplica", ge=1, description="Backlog one worker pod is expected to work through."
    )
    scale_down_stabilization_seconds: int = Field(
        60, alias="scaleDownStabilizationSeconds", ge=0, le=3600,
        description="How long a lower backlog must last before workers are removed (scaling up is immediate); "
                    "0 scales down at the next check.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must be <= maxReplicas")
        return self


class PasswordRef(_Model):
    """A key of a Secret in the environment's namespace holding a password."""

    name: K8sName = Field(..., description="Name of the Secret.")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        "password", description="The key holding the password.")


_ROTATE_OR_TEAM = ("rotateEvery rotates a password the operator mints; with passwordSecretRef your team's Secret "
                   "decides when it changes")
MIN_ROTATE_SECONDS = 60
_ROTATE_MIN = f"rotateEvery must be at least {MIN_ROTATE_SECONDS}s"


class BrokerSpec(_Model):
    """Where the RabbitMQ broker is and which virtual host to use."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.rotateEvery) || !has(self.passwordSecretRef)", _ROTATE_OR_TEAM, ".rotateEvery"),
                cel(f"!has(self.rotateEvery) || (self.rotateEvery.matches('^([0-9]{{1,6}}(h|m|s)){{1,3}}$') && "
                    f"duration(self.rotateEvery) >= duration('{MIN_ROTATE_SECONDS}s'))", _ROTATE_MIN, ".rotateEvery"),
            ]
        }
    )

    connection_secret_ref: SecretRef | None = Field(
        None,
        alias="connectionSecretRef",
        description="Secret with the broker's admin connection (keys: url, management-url, username, password). "
        "Defaults to the operator's own broker Secret.",
    )
    vhost: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(
        "/", description="RabbitMQ virtual host."
    )
    password_secret_ref: PasswordRef | None = Field(
        None,
        alias="passwordSecretRef",
        description="A Secret your team keeps (written by Vault, an external-secrets operator or by hand) with the "
        "workers' broker password: the operator sets the environment's broker user to it and follows each change "
        "(the workers roll); it only reads that Secret. Unset: the operator mints the password (and rotates it "
        "when the annotation matchenv.io/rotate-credentials changes, or every rotateEvery).",
    )
    rotate_every: Annotated[str, StringConstraints(pattern=GO_DURATION, max_length=32)] | None = Field(
        None,
        alias="rotateEvery",
        description="Rotate the workers' broker password this often, e.g. '720h' (30 days), at least '60s'. Each "
        "rotation switches the workers to the environment's other broker user with a new password (the Secret "
        "changes, the workers roll) and removes the previous user once no worker pod runs with it: no worker is "
        "refused mid-message. status.credentials says which user, since when, and the next rotation.",
    )

    @model_validator(mode="after")
    def _rotation(self) -> BrokerSpec:
        if self.rotate_every is not None:
            if self.password_secret_ref is not None:
                raise ValueError(_ROTATE_OR_TEAM)
            if duration_seconds(self.rotate_every) < MIN_ROTATE_SECONDS:
                raise ValueError(_ROTATE_MIN)
        return self


_ROUTING_KEYS_TOPIC = "exchange.type 'topic' needs at least one queue.routingKeys entry"
_BACKFILL_ONE = "backfill needs exactly one of since (e.g. '168h') and from (an RFC 3339 time)"
BACKFILL_SINCE_MAX_HOURS = 87_600  # ten years: far beyond any archive's retention
_BACKFILL_SINCE_MAX = f"backfill.since must be at most {BACKFILL_SINCE_MAX_HOURS}h (ten years)"


class BackfillSpec(_Model):
    """Matches published before this environment existed, from the operator's archive of the feed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.since) != has(self.from)", _BACKFILL_ONE, ""),
                # the pattern first bounds the digits: Go's duration() overflows beyond 2,562,047 hours
                cel(f"!has(self.since) || (self.since.matches('^([0-9]{{1,6}}(h|m|s)){{1,3}}$') && "
                    f"duration(self.since) <= duration('{BACKFILL_SINCE_MAX_HOURS}h'))", _BACKFILL_SINCE_MAX,
                    ".since"),
            ]
        }
    )

    since: Annotated[str, StringConstraints(pattern=GO_DURATION, max_length=32)] | None = Field(
        None,
        description="How far back, from when the backfill starts, e.g. '168h' (a week) or '90m'. The archive keeps "
        "what the operator's MATCHENV_ARCHIVE_MAX_AGE allows (30 days by default).",
    )
    from_: dt.datetime | None = Field(
        None, alias="from", description="From this time on (RFC 3339), instead of since.",
    )

    @model_validator(mode="after")
    def _one(self) -> BackfillSpec:
        if (self.since is None) == (self.from_ is None):
            raise ValueError(_BACKFILL_ONE)
        if self.since is not None and self.since_seconds() > BACKFILL_SINCE_MAX_HOURS * 3600:
            raise ValueError(_BACKFILL_SINCE_MAX)
        return self

    def since_seconds(self) -> int:
        return duration_seconds(self.since) if self.since else 0

    def start(self, now: dt.datetime) -> dt.datetime:
        """The first instant to replay, ``now`` minus ``since`` or ``from``."""
        if self.from_ is not None:
            return self.from_ if self.from_.tzinfo else self.from_.replace(tzinfo=dt.UTC)
        return now - dt.timedelta(seconds=self.since_seconds())


class DrainSpec(_Model):
    """How a deletion under deletionPolicy Drain waits for the workers to empty the queue."""

    timeout: str = Field(
        "15m", pattern=GO_DURATION,
        description="How long the deletion waits for the queue to empty (from when it was asked for), e.g. '15m'.",
    )
    on_timeout: AfterDrain = Field(
        AfterDrain.RETAIN,
        alias="onTimeout",
        description="What becomes of a queue still holding messages after the timeout: 'Retain' (the default: kept "
        "with them) or 'Delete' (deleted, within deletionGuard).",
    )


class DeletionGuardSpec(_Model):
    """A bound on what a deletion may drop."""

    max_messages: int | None = Field(
        None, ge=0, alias="maxMessages",
        description="A deletion that would delete the queue while it holds more messages than this waits instead "
        "(condition Drained, reason TooManyToDrop) until the annotation matchenv.io/drop-messages is \"true\", "
        "or deletionPolicy is changed to Retain. Unset: no bound.",
    )


class DeadLetterAction(StrEnum):
    REDRIVE = "Redrive"
    PURGE = "Purge"


DeadLetterReason = Literal["invalid", "store-error", "malformed", "unknown-task", "rejected", "expired", "maxlen",
                           "delivery_limit", "unknown"]
MAX_REDRIVE = 10_000


class DeadLetterRequest(_Model):
    """A request, carried out by the operator once per id, on the environment's dead-letter queue: no broker
    credentials leave it, and leave to edit this MatchEnvironment is all a user needs."""

    id: str = Field(..., min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                    description="Names this request: each id is carried out once (status.deadLetterRequest says "
                    "how); a new id asks again.")
    action: DeadLetterAction = Field(
        DeadLetterAction.REDRIVE,
        description="'Redrive' sends the dead letters back to this environment's queue (only there; each confirmed "
        "by the broker before its dead-letter copy goes; the workers upsert, never twice); 'Purge' deletes them.",
    )
    reason: DeadLetterReason | None = Field(
        None, description="Only the letters of this reason (the workers': invalid, store-error, malformed, "
        "unknown-task; the broker's: rejected, expired, maxlen, delivery_limit). Unset: all.",
    )
    limit: int = Field(1000, ge=1, le=MAX_REDRIVE, description="Most letters to redrive or purge.")


class MatchEnvironmentSpec(_Model):
    """Desired state of one environment: its queue and binding, broker user, workers and scaling."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.exchange.type != 'topic' "
                    "|| (has(self.queue.routingKeys) && size(self.queue.routingKeys) > 0)",
                    _ROUTING_KEYS_TOPIC, ".queue.routingKeys"),
            ]
        }
    )

    exchange: ExchangeSpec = Field(default_factory=ExchangeSpec, description="The exchange matches arrive on.")
    queue: QueueSpec = Field(default_factory=QueueSpec, description="This environment's queue.")
    deletion_policy: DeletionPolicy = Field(
        DeletionPolicy.RETAIN,
        alias="deletionPolicy",
        description="On delete, 'Retain' keeps the queue and its messages (the binding is always removed); "
        "'Delete' deletes the queue and its dead-letter queue; 'Drain' unbinds, lets the workers empty the queue "
        "(within drain.timeout), then deletes what Delete deletes (drain.onTimeout says what becomes of a queue "
        "that did not empty in time).",
    )
    drain: DrainSpec = Field(default_factory=DrainSpec, description="How a Drain deletion waits.")
    deletion_guard: DeletionGuardSpec = Field(
        default_factory=DeletionGuardSpec, alias="deletionGuard",
        description="A bound on the messages a deletion may drop with the queue.",
    )
    broker: BrokerSpec = Field(default_factory=BrokerSpec, description="Broker connection.")
    workers: WorkersSpec = Field(
        ..., description="The Celery worker Deployment that consumes this environment's queue."
    )
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Backlog-based autoscaling.")
    backfill: BackfillSpec | None = Field(
        None,
        description="Replay archived matches into this environment's queue once it is bound, so that it starts "
        "with the data the others hold: a one-shot Job the operator owns delivers them to this queue only. "
        "Changing it runs a new backfill; re-deliveries are harmless (the store upserts). Progress in "
        "status.backfill and the BackfillComplete condition.",
    )
    expire_after: str | None = Field(
        None,
        alias="expireAfter",
        pattern=GO_DURATION,
        description="Delete this environment this long after expireFrom, as `kubectl delete` would (its queue kept or "
        "deleted as deletionPolicy says), e.g. '30s', '1h30m', '168h' (a week): for preview environments, one per pull "
        "request. status.expiresAt says when (the EXPIRES column); removing the field cancels it.",
    )
    expire_from: ExpireFrom = Field(
        ExpireFrom.CREATION,
        alias="expireFrom",
        description="What expireAfter counts from: 'Creation' (the default) or 'LastChange', the last change of the "
        "spec (each apply that changes it starts the count again).",
    )
    dead_letter_request: DeadLetterRequest | None = Field(
        None, alias="deadLetterRequest",
        description="Redrive or purge this environment's dead letters, carried out by the operator once per id.",
    )
    paused: bool = Field(
        False,
        description="Stop the workers (0 pods, whatever replicas or the autoscaler say) and keep the queue bound: "
        "messages wait in it, bounded by queue.maxLength and queue.overflow when set; phase Paused. false resumes "
        "and the workers drain what waited. E.g. for a migration of this environment's database. pauseMode Unbind "
        "keeps no backlog instead.",
    )
    pause_mode: PauseMode = Field(
        PauseMode.HOLD,
        alias="pauseMode",
        description="How spec.paused pauses. 'Hold' (the default): the queue stays bound and fills while paused. "
        "'Unbind': the queue is unbound (it takes nothing from the feed, no backlog grows) and, on resume, bound "
        "again and given what it missed from the operator's archive of the feed, from the instant it was unbound, "
        "so it ends with what the others hold (status.pause.catchUp says how far). Needs the archive "
        "(MATCHENV_ARCHIVE not off); without it the pause holds, and status says so.",
    )

    @model_validator(mode="after")
    def _routing_keys(self) -> MatchEnvironmentSpec:
        keys = self.queue.routing_keys or []
        if self.exchange.type is ExchangeType.TOPIC and not keys:
            raise ValueError(_ROUTING_KEYS_TOPIC)
        return self


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """One observed aspect of the environment, in the usual Kubernetes condition shape."""

    type: Literal["TopologyReady", "WorkersReady", "Ready", "BackfillComplete", "ReconciliationPaused",
                  "Drained"] = Field(
        ..., description="Condition type. ReconciliationPaused is True while the annotation matchenv.io/reconcile "
        "is \"false\": the operator then changes nothing for the environment (no repair, no scaling, no deletion). "
        "Drained, during a deletion: False while it waits for the queue to empty (Draining, NoConsumers), once "
        "drain.timeout passed (TimedOut), or while it waits for leave to drop the messages (TooManyToDrop)."
    )
    status: ConditionStatus = Field(..., description="'True', 'False' or 'Unknown'.")
    reason: str = Field(..., description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: dt.datetime = Field(
        ..., alias="lastTransitionTime", description="When the status last changed."
    )
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="The spec generation this condition was computed from."
    )


class AutoscalingStatus(_Model):
    """What the autoscaler last saw and decided (present while autoscaling is on)."""

    backlog: int | None = Field(None, description="Messages in the queue (ready plus unacknowledged) it scaled on.")
    replicas: int | None = Field(None, description="Worker pods it wants for that backlog.")
    last_scale_time: dt.datetime | None = Field(
        None, alias="lastScaleTime", description="When it last changed spec.workers.replicas."
    )
    message: str | None = Field(
        None, description="Its last decision, e.g. a spec.workers.replicas set by hand that it put back."
    )


class BackfillPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"


class BackfillStatus(_Model):
    """The backfill the operator runs for spec.backfill."""

    request: str | None = Field(None, description="Which spec.backfill this is about (a digest of it).")
    phase: BackfillPhase | None = Field(None, description="Pending, Running, Complete or Failed (and retrying).")
    from_: dt.datetime | None = Field(None, alias="from", description="First instant replayed.")
    job: str | None = Field(None, description="The Job delivering the archived matches.")
    attempts: int | None = Field(None, description="Jobs started for this request.")
    delivered: int | None = Field(None, description="Archived matches delivered to the queue so far.")
    start_time: dt.datetime | None = Field(None, alias="startTime", description="When the current Job started.")
    completion_time: dt.datetime | None = Field(None, alias="completionTime", description="When it completed.")
    retry_time: dt.datetime | None = Field(None, alias="retryTime", description="When a failed one is retried.")
    message: str | None = Field(None, description="What happened, or why it failed.")


class QuorumStatus(_Model):
    """A quorum queue's replicas as the broker reports them."""

    members: list[str] | None = Field(None, description="The broker nodes holding a replica.")
    online: list[str] | None = Field(None, description="The members running now.")
    leader: str | None = Field(None, description="The member that takes and delivers the queue's messages.")
    has_quorum: bool | None = Field(None, alias="hasQuorum", description="Whether more than half the members "
                                    "run: without it the queue takes and delivers nothing.")


class PlacementStatus(_Model):
    """Where the environment's broker objects live: what a change of queue name, vhost or broker lets go of."""

    queue: str = Field(..., description="The queue's name.")
    vhost: str = Field(..., description="The queue's virtual host.")
    broker_secret: str = Field(..., alias="brokerSecret",
                               description="The broker connection Secret, '<namespace>/<name>'.")


class DeadLetterRequestStatus(_Model):
    """What became of the last spec.deadLetterRequest."""

    id: str = Field(..., description="The request's id.")
    action: DeadLetterAction = Field(..., description="Redrive or Purge.")
    reason: str | None = Field(None, description="The reason it was limited to.")
    done: int | None = Field(None, description="Letters redriven or purged.")
    left: int | None = Field(None, description="Letters left in the dead-letter queue (of any reason).")
    succeeded: bool = Field(..., description="Whether it was carried out; a failed one is retried only with a new id.")
    completion_time: dt.datetime | None = Field(None, alias="completionTime", description="When it ended.")
    message: str | None = Field(None, description="What was done, or why it failed.")


class PauseStatus(_Model):
    """The current pause (spec.paused) and the last catch-up after a pause in Unbind mode."""

    mode: PauseMode | None = Field(None, description="How the environment is paused now: Hold or Unbind; unset "
                                   "while it runs.")
    since: dt.datetime | None = Field(None, description="When the current pause began (Unbind: when the queue was "
                                      "unbound).")
    message: str | None = Field(None, description="What the pause does, or why it cannot do what was asked.")
    catch_up: BackfillStatus | None = Field(
        None, alias="catchUp", description="The replay of what the queue missed while unbound: pending while paused, "
        "run once resumed (a Job, as for spec.backfill), kept as the record of the last one once complete.",
    )


class CredentialsStatus(_Model):
    """The workers' broker user: which of the environment's two, and its rotations."""

    user: str | None = Field(None, description="The broker user the workers' Secret names.")
    rotated_at: dt.datetime | None = Field(None, alias="rotatedAt", description="When its password was set (the "
                                           "last rotation, or the Secret's creation).")
    next_rotation_at: dt.datetime | None = Field(None, alias="nextRotationAt",
                                                 description="With spec.broker.rotateEvery: when the next is due.")
    previous_user: str | None = Field(None, alias="previousUser", description="The user before the last rotation, "
                                      "while a worker pod may still use it; removed once none does.")
    previous_user_problem: str | None = Field(
        None, alias="previousUserProblem", description="Why the previous user could not be removed yet (the broker's "
        "answer; tried again at each converge). A BrokerUserNotRetired Warning is posted when it changes.")


class MatchEnvironmentStatus(_Model):
    """Observed state, written by the operator."""

    phase: Phase | None = Field(None, description="Pending, Ready, Degraded, Paused or Deleting.")
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="The spec generation last reconciled."
    )
    exchange: str | None = Field(None, description="Exchange the queue is bound to.")
    queue: str | None = Field(None, description="Name of the environment's queue.")
    messages: int | None = Field(None, description="Messages in the queue: ready plus unacknowledged.")
    dead_letter_messages: int | None = Field(
        None, alias="deadLetterMessages", description="Messages in the dead-letter queue."
    )
    consumers: int | None = Field(None, description="Consumers attached to the queue.")
    oldest_message_time: dt.datetime | None = Field(
        None, alias="oldestMessageTime", description="When the oldest message waiting in the queue was published "
        "(classic queues, for messages stamped with a timestamp as matchenv scrape does); how long the environment "
        "has been behind while no worker reads, as `matchenv status` shows.")
    quorum: QuorumStatus | None = Field(None, description="For a quorum queue: its members, those running and "
                                        "its leader; TopologyReady names any member down.")
    replicas: int | None = Field(None, description="Worker pods (scale subresource status).")
    ready_replicas: int | None = Field(None, alias="readyReplicas", description="Worker pods that are ready.")
    ready: str | None = Field(None, description="'<readyReplicas>/<replicas>', as shown in the READY column.")
    selector: str | None = Field(None, description="Label selector of the worker pods (scale subresource).")
    autoscaling: AutoscalingStatus | None = Field(None, description="The autoscaler's view, while it is enabled.")
    backfill: BackfillStatus | None = Field(None, description="The backfill's progress, while spec.backfill is set.")
    pause: PauseStatus | None = Field(None, description="Since when the environment is paused, and the catch-up after "
                                      "a pause in Unbind mode.")
    credentials: CredentialsStatus | None = Field(None, description="The workers' broker user and its rotations "
                                                  "(passwords the operator mints).")
    placement: PlacementStatus | None = Field(
        None, description="Where its broker objects live; after a change of queue name, vhost or broker the old "
        "place keeps this until the old queue is unbound (and deleted under deletionPolicy Delete) and the old "
        "permissions are gone.")
    events_secret: str | None = Field(
        None, alias="eventsSecret", description="With spec.workers.taskEvents: the Secret with the broker user "
        "that reads this environment's task events (for 'matchenv flower'); gone when taskEvents is turned off.")
    expires_at: dt.datetime | None = Field(
        None, alias="expiresAt", description="With spec.expireAfter: when the operator deletes this environment."
    )
    dead_letter_request: DeadLetterRequestStatus | None = Field(
        None, alias="deadLetterRequest", description="What became of the last spec.deadLetterRequest."
    )
    last_error: str | None = Field(None, alias="lastError", description="The last reconcile error, if any.")
    conditions: list[Condition] | None = Field(
        None,
        description="TopologyReady, WorkersReady and Ready (and BackfillComplete with spec.backfill).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

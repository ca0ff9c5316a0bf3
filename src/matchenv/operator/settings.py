"""Operator settings: from ``MATCHENV_*`` environment variables, overridden by ``matchenv operator run`` options."""

from __future__ import annotations

import os
import re
import socket
import uuid

from pydantic import BaseModel, Field, field_validator

from matchenv.contracts import DEFAULT_EXCHANGE
from matchenv.naming import CLUSTER_ID_PATTERN

NAMESPACE_PLACEHOLDER = "{namespace}"  # in MATCHENV_QUEUE_PATTERN: the environment's own namespace


_AGE_UNITS = {"Y": 365 * 86400.0, "M": 30 * 86400.0, "D": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


class OperatorSettings(BaseModel):
    """How one operator process runs."""

    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty: all.")
    resync_seconds: float = Field(10.0, gt=0, description="How often the broker and Deployments are re-checked.")
    broker_secret: str = Field("matchenv-system/matchenv-broker",
                               description="namespace/name of the Secret with the default broker connection.")
    operator_namespace: str = Field("matchenv-system", description="Where the leader Lease lives.")
    leader_election: bool = True
    lease_name: str = "matchenv-operator"
    lease_seconds: float = Field(15.0, gt=1)
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    metrics_port: int = Field(8080, ge=0, le=65535, description="Prometheus metrics; 0 turns them off.")
    health_port: int = Field(8081, ge=0, le=65535, description="kopf liveness endpoint; 0 turns it off.")
    metrics_secure: bool = Field(False, description="Serve the metrics over TLS, only to bearer tokens the API "
                                 "server authenticates and allows GET on /metrics (MATCHENV_METRICS_SECURE).")
    metrics_cert_dir: str = Field("", description="Where tls.crt and tls.key of the secure metrics are "
                                  "(MATCHENV_METRICS_CERT_DIR: a mounted kubernetes.io/tls Secret).")
    api_timeout: float = Field(10.0, gt=0, description="Seconds for each Kubernetes API request.")
    broker_timeout: float = Field(10.0, gt=0, description="Seconds for each management-API request.")
    kubeconfig: str | None = None
    log_json: bool = False
    # Bounds for environments that use the operator's own broker Secret (an environment that brings its own
    # broker.connectionSecretRef is bound by what its credentials allow instead).
    queue_pattern: str = Field(r"^matches\.", description="Queue names must match this regex "
                               "(MATCHENV_QUEUE_PATTERN). '{namespace}' in it stands for the environment's own "
                               "namespace, which ties queue names to namespaces: ^matches\\.{namespace}\\. lets "
                               "namespace team-a have matches.team-a.* only.")
    allowed_exchanges: list[str] = Field(default_factory=lambda: [DEFAULT_EXCHANGE],
                                         description="Exchanges environments may bind to (MATCHENV_ALLOWED_EXCHANGES).")
    allowed_vhosts: list[str] = Field(default_factory=lambda: ["/"],
                                      description="Virtual hosts environments may use (MATCHENV_ALLOWED_VHOSTS).")

    adopt_namespaces: list[str] = Field(default_factory=list, description="Namespaces whose environments may set "
                                        "spec.queue.adopt: take over a queue not made by matchenv, with its "
                                        "messages (MATCHENV_ADOPT_NAMESPACES; '*' for all; default none).")
    allow_reject_publish: bool = Field(False, description="Let environments set queue.overflow reject-publish or "
                                       "reject-publish-dlx (MATCHENV_ALLOW_REJECT_PUBLISH). Off by default: a full "
                                       "queue in that mode makes the broker refuse every publish to the shared "
                                       "exchange, for every environment.")

    max_queue_length: int = Field(0, ge=0, description="Most messages any environment's queue may hold, paused "
                                  "ones and dead-letter queues included (MATCHENV_MAX_QUEUE_LENGTH; 0: no maximum). "
                                  "Beyond it the oldest are dropped; an environment's queue.maxLength may only be "
                                  "lower. One operator policy per vhost (matchenv.max-length).")

    tenant_broker_hosts: list[str] | None = Field(None, description="Hosts an environment's own "
                                                  "broker.connectionSecretRef may point at, as shell patterns "
                                                  "(e.g. rabbitmq.team-a.svc, *.brokers.example.com), for its "
                                                  "management and AMQP URLs (MATCHENV_TENANT_BROKER_HOSTS; unset: "
                                                  "any; 'none': connectionSecretRef refused). The operator makes "
                                                  "HTTP calls to whatever a tenant's Secret names.")

    cluster_id: str = Field("", description="This cluster's identity on shared brokers (MATCHENV_CLUSTER_ID): part "
                            "of every ownership marker and broker user name the operator makes, so two clusters' "
                            "environments of the same name never meet. Unset: the first 8 hex digits of the "
                            "kube-system namespace's UID. Set it before the first environment: a changed identity "
                            "makes the operator a stranger to what it made.")

    publisher_secret: str = Field("matchenv-publisher", description="Secret (in the operator's namespace) with the "
                                  "scraper's publish-only broker user, kept by the leader; empty turns it off "
                                  "(MATCHENV_PUBLISHER_SECRET).")

    broker_events: bool = Field(True, description="Follow the broker's events (its rabbitmq_event_exchange plugin) "
                                "to repair a deleted queue, binding, policy, user or permission at once; without "
                                "the plugin the resync repairs drift (MATCHENV_BROKER_EVENTS).")
    backlog_probe: bool = Field(True, description="Read each autoscaled queue's ready count over AMQP every second "
                                "(a passive declare) and scale up at once when it asks for more workers, instead of "
                                "at the next resync from the broker's statistics (MATCHENV_BACKLOG_PROBE).")

    owner_deployment: str = Field("", description="The operator's own Deployment (MATCHENV_OWNER_DEPLOYMENT): the "
                                  "Lease and the publisher Secret it creates are owned by it, so deleting the "
                                  "installation deletes them too.")

    archive: str = Field("always", pattern="^(always|on-demand|off)$", description="Keep a stream archive of each "
                         "fanout exchange environments use, for backfills (MATCHENV_ARCHIVE): 'always', 'on-demand' "
                         "(from the first environment that asks for a backfill: it gets only what came after) or "
                         "'off'.")
    archive_max_age: str = Field("30D", pattern=r"^[0-9]+[YMDhms]$", description="How long the archive keeps a "
                                 "match, in RabbitMQ's max-age form, e.g. 30D, 12h (MATCHENV_ARCHIVE_MAX_AGE).")
    archive_max_bytes: int = Field(10_000_000_000, ge=1_000_000, description="Most bytes the archive keeps; the "
                                   "oldest go first (MATCHENV_ARCHIVE_MAX_BYTES).")
    archive_segment_bytes: int = Field(10_000_000, ge=1_000, description="Size of the archive's segment files: "
                                       "retention removes whole segments, so a match outlives max-age by at most "
                                       "one segment (MATCHENV_ARCHIVE_SEGMENT_BYTES; set when the archive is "
                                       "created).")

    @property
    def archive_max_age_seconds(self) -> float | None:
        """``archive_max_age`` in seconds (RabbitMQ's units: Y 365 days, M 30 days); None when there is no
        archive."""
        if self.archive == "off":
            return None
        return int(self.archive_max_age[:-1]) * _AGE_UNITS[self.archive_max_age[-1]]

    @field_validator("queue_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value.replace(NAMESPACE_PLACEHOLDER, "namespace"))
        except re.error as exc:
            raise ValueError(f"queue_pattern is not a regular expression: {exc}") from exc
        return value

    def queue_pattern_for(self, namespace: str) -> str:
        """The queue pattern an environment of ``namespace`` must match."""
        return self.queue_pattern.replace(NAMESPACE_PLACEHOLDER, re.escape(namespace))

    @property
    def queue_pattern_any(self) -> str:
        """The queue pattern whatever the namespace (for the broker's operator policy)."""
        return self.queue_pattern.replace(NAMESPACE_PLACEHOLDER, "[a-z0-9]([-a-z0-9]*[a-z0-9])?")

    @field_validator("cluster_id")
    @classmethod
    def _cluster_id(cls, value: str) -> str:
        if value and not re.match(CLUSTER_ID_PATTERN, value):
            raise ValueError("cluster_id must be 1-32 lower-case letters, digits and '-', starting and ending with a "
                             "letter or digit (it goes into broker user names and markers)")
        return value

    @field_validator("broker_secret")
    @classmethod
    def _namespaced(cls, value: str) -> str:
        if value.count("/") != 1 or not all(value.split("/")):
            raise ValueError("broker_secret must be 'namespace/name'")
        return value

    @property
    def broker_secret_ref(self) -> tuple[str, str]:
        namespace, name = self.broker_secret.split("/")
        return namespace, name

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> OperatorSettings:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {}
        mapping = {
            "MATCHENV_RESYNC_SECONDS": "resync_seconds",
            "MATCHENV_BROKER_SECRET": "broker_secret",
            "MATCHENV_OPERATOR_NAMESPACE": "operator_namespace",
            "POD_NAMESPACE": "operator_namespace",
            "MATCHENV_LEADER_ELECTION": "leader_election",
            "MATCHENV_LEASE_NAME": "lease_name",
            "MATCHENV_LEASE_SECONDS": "lease_seconds",
            "POD_NAME": "identity",
            "MATCHENV_METRICS_PORT": "metrics_port",
            "MATCHENV_HEALTH_PORT": "health_port",
            "MATCHENV_METRICS_SECURE": "metrics_secure",
            "MATCHENV_METRICS_CERT_DIR": "metrics_cert_dir",
            "MATCHENV_API_TIMEOUT": "api_timeout",
            "MATCHENV_BROKER_TIMEOUT": "broker_timeout",
            "KUBECONFIG": "kubeconfig",
            "MATCHENV_LOG_JSON": "log_json",
            "MATCHENV_OWNER_DEPLOYMENT": "owner_deployment",
            "MATCHENV_BROKER_EVENTS": "broker_events",
            "MATCHENV_BACKLOG_PROBE": "backlog_probe",
            "MATCHENV_ARCHIVE": "archive",
            "MATCHENV_ARCHIVE_MAX_AGE": "archive_max_age",
            "MATCHENV_ARCHIVE_MAX_BYTES": "archive_max_bytes",
            "MATCHENV_ARCHIVE_SEGMENT_BYTES": "archive_segment_bytes",
            "MATCHENV_ALLOW_REJECT_PUBLISH": "allow_reject_publish",
            "MATCHENV_MAX_QUEUE_LENGTH": "max_queue_length",
            "MATCHENV_CLUSTER_ID": "cluster_id",
        }
        for var, field in mapping.items():
            if env.get(var):
                values[field] = env[var]
        lists = {"MATCHENV_NAMESPACES": "namespaces", "MATCHENV_ALLOWED_EXCHANGES": "allowed_exchanges",
                 "MATCHENV_ALLOWED_VHOSTS": "allowed_vhosts", "MATCHENV_ADOPT_NAMESPACES": "adopt_namespaces"}
        for var, field in lists.items():
            if env.get(var):
                values[field] = [n.strip() for n in env[var].split(",") if n.strip()]
        if env.get("MATCHENV_TENANT_BROKER_HOSTS", "").strip() not in ("", "*"):
            hosts = env["MATCHENV_TENANT_BROKER_HOSTS"].strip()
            values["tenant_broker_hosts"] = [] if hosts == "none" else [h.strip() for h in hosts.split(",")
                                                                         if h.strip()]
        if "MATCHENV_PUBLISHER_SECRET" in env:  # an empty value means: no publisher user
            values["publisher_secret"] = env["MATCHENV_PUBLISHER_SECRET"].strip()
        if env.get("MATCHENV_QUEUE_PATTERN"):
            values["queue_pattern"] = env["MATCHENV_QUEUE_PATTERN"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

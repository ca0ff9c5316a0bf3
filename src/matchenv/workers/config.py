"""Worker configuration from the environment the operator's Deployment sets (and the options of `matchenv worker`).

Names kept from the existing deployments: ``CELERY_BROKER_URL`` (or ``RABBITMQ_URL``), ``SUPABASE_URL`` with
``SUPABASE_SERVICE_KEY`` (or ``SUPABASE_KEY``), or ``DATABASE_URL`` for plain Postgres.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from matchenv import contracts as c


class WorkerConfigError(Exception):
    """Configuration is missing or wrong; the message names the variable (and where it usually comes from)."""


class DatabaseConfig(BaseModel):
    kind: Literal["postgres", "supabase"]
    url: SecretStr  # DATABASE_URL (may hold a password) or SUPABASE_URL
    key: SecretStr | None = None  # the Supabase key
    migrate: bool = True  # PostgreSQL: create or update the schema (MATCHENV_MIGRATE=false: the owner does it)

    def describe(self) -> str:
        """Where the worker writes, without credentials (for logs)."""
        if self.kind == "supabase":
            return f"supabase at {self.url.get_secret_value()}"
        from urllib.parse import urlsplit

        parts = urlsplit(self.url.get_secret_value())
        return f"postgres at {parts.hostname}:{parts.port or 5432}{parts.path}"


class WorkerConfig(BaseModel):
    broker_url: SecretStr
    queue: str = Field(min_length=1)
    queue_type: Literal["classic", "quorum"] = "classic"
    dead_letter_exchange: str = ""
    concurrency: int = Field(1, ge=1, le=64)
    # messages delivered ahead, not yet acknowledged: the batches are made of them (more: faster, but held away
    # from the other replicas)
    prefetch: int = Field(256, ge=1, le=10_000)
    database: DatabaseConfig
    metrics_port: int = Field(9808, ge=0, le=65535)
    store_retries: int = Field(3, ge=1, le=10)
    environment: str = ""
    owner: str = ""  # namespace/name of the MatchEnvironment: the ownership marker its queue is declared with
    task_events: bool = False  # send Celery task and heartbeat events to c.events_exchange(queue), for Flower

    @classmethod
    def from_env(cls, env: Mapping[str, str], queue: str | None = None, concurrency: int | None = None
                 ) -> WorkerConfig:
        broker = env.get(c.ENV_BROKER_URL) or env.get(c.ENV_BROKER_URL_FALLBACK)
        if not broker:
            raise WorkerConfigError("no broker URL: set CELERY_BROKER_URL or RABBITMQ_URL "
                                    "(the operator sets it from Secret <environment>-broker, key url)")
        queue = queue or env.get(c.ENV_QUEUE)
        if not queue:
            raise WorkerConfigError("no queue: pass --queue or set MATCHENV_QUEUE")
        return cls(
            broker_url=SecretStr(broker),
            queue=queue,
            queue_type=env.get(c.ENV_QUEUE_TYPE, "classic"),
            dead_letter_exchange=env.get(c.ENV_DEAD_LETTER_EXCHANGE, f"{queue}{c.DLX_SUFFIX}"),
            concurrency=concurrency or int(env.get(c.ENV_CONCURRENCY, "1")),
            prefetch=int(env.get(c.ENV_PREFETCH, "256")),
            database=database_from_env(env),
            metrics_port=int(env.get(c.ENV_METRICS_PORT, str(c.WORKER_METRICS_PORT))),
            environment=env.get(c.ENV_ENVIRONMENT, ""),
            owner=env.get(c.ENV_OWNER, ""),
            task_events=env.get(c.ENV_TASK_EVENTS, "").lower() == "true",
        )


def database_from_env(env: Mapping[str, str]) -> DatabaseConfig:
    """``DATABASE_URL`` wins; else ``SUPABASE_URL`` with ``SUPABASE_SERVICE_KEY`` or ``SUPABASE_KEY``."""
    if env.get(c.ENV_DATABASE_URL):
        return DatabaseConfig(kind="postgres", url=SecretStr(env[c.ENV_DATABASE_URL]),
                              migrate=env.get(c.ENV_MIGRATE, "true").lower() != "false")
    if env.get(c.ENV_SUPABASE_URL):
        key = next((env[k] for k in c.ENV_SUPABASE_KEYS if env.get(k)), None)
        if not key:
            raise WorkerConfigError("SUPABASE_URL is set but neither SUPABASE_SERVICE_KEY nor SUPABASE_KEY is "
                                    "(keys of the environment's databaseSecretRef Secret)")
        return DatabaseConfig(kind="supabase", url=SecretStr(env[c.ENV_SUPABASE_URL]), key=SecretStr(key))
    raise WorkerConfigError("no database: set DATABASE_URL, or SUPABASE_URL with SUPABASE_SERVICE_KEY or "
                            "SUPABASE_KEY (keys of the environment's databaseSecretRef Secret)")

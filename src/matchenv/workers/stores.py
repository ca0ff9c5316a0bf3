"""Where matches are written: one small interface, a Postgres and a Supabase implementation of it.

Both call the same SQL function, ``matchenv_upsert_match(jsonb)`` (shipped as a migration), so the upsert keyed by
``external_match_id`` (or home team, away team, date, age group), the write-only-on-change rule and the
created/updated/skipped answer are one piece of code whichever way the database is reached.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from typing import Any, Literal, Protocol

import psycopg
from psycopg import errors as pg_errors

from matchenv.models import Match
from matchenv.workers.config import DatabaseConfig

log = logging.getLogger("matchenv.worker")

Outcome = Literal["created", "updated", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("created", "updated", "skipped")


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The database cannot be reached: wait for it (the message stays unacknowledged), never dead-letter."""


class TransientStoreError(StoreError):
    """Worth another try soon: serialization failure, deadlock, statement timeout."""


class PermanentStoreError(StoreError):
    """Will fail the same way again: dead-letter the message with this reason."""


class Store(Protocol):
    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome: ...
    def close(self) -> None: ...


def _payload(match: Match, scraped_at: dt.datetime | None) -> dict[str, Any]:
    """The upsert's argument: the match, and when the publisher read it (None: unstamped, last writer wins)."""
    payload = match.model_dump(mode="json", exclude_none=False)
    payload["scraped_at"] = scraped_at.isoformat() if scraped_at else None
    return payload


def _outcome(value: Any) -> Outcome:
    if value not in OUTCOMES:
        raise PermanentStoreError(f"matchenv_upsert_match answered {value!r}")
    result: Outcome = value
    return result


_TRANSIENT_PG = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.QueryCanceled,
                 pg_errors.LockNotAvailable, pg_errors.TooManyConnections, pg_errors.AdminShutdown,
                 pg_errors.CannotConnectNow)


class _SchemaMissing(Exception):
    pass


class PostgresStore:
    """psycopg 3; one autocommit connection per thread, reopened after a failure. With ``auto_migrate``, a
    database whose schema is missing (it was not up when the worker started, or was recreated) is migrated when
    the first message finds it so, and the message stored."""

    def __init__(self, url: str, connect_timeout: int = 5, statement_timeout_ms: int = 10_000,
                 auto_migrate: bool = False) -> None:
        self.url = url
        self.auto_migrate = auto_migrate
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self._local = threading.local()

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout,
                                       options=f"-c statement_timeout={self.statement_timeout_ms}")
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"database unreachable: {_first_line(exc)}") from exc
            self._local.conn = conn
        return conn

    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome:
        try:
            return self._upsert(match, scraped_at)
        except _SchemaMissing:
            if not self.auto_migrate:
                raise StoreUnavailable("matchenv_upsert_match is missing: run `matchenv db migrate`") from None
        from matchenv.workers.migrate import migrate

        try:
            applied = migrate(self.url, timeout=self.connect_timeout)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"the schema is missing and migrating failed: {_first_line(exc)}") from exc
        log.info("schema migrated (%s)", ", ".join(applied) or "by another worker")
        try:
            return self._upsert(match, scraped_at)
        except _SchemaMissing:
            raise StoreUnavailable("matchenv_upsert_match is still missing after migrating") from None

    def _upsert(self, match: Match, scraped_at: dt.datetime | None) -> Outcome:
        conn = self._conn()
        try:
            row = conn.execute("select matchenv_upsert_match(%s::jsonb)",
                               (json.dumps(_payload(match, scraped_at)),)).fetchone()
        except _TRANSIENT_PG as exc:
            self._drop()
            raise TransientStoreError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        except psycopg.OperationalError as exc:
            self._drop()
            raise StoreUnavailable(f"database connection lost: {_first_line(exc)}") from exc
        except pg_errors.UndefinedFunction as exc:
            raise _SchemaMissing from exc
        except psycopg.Error as exc:
            raise PermanentStoreError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return _outcome(row[0] if row else None)

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._drop()


class SupabaseStore:
    """supabase-py: the same upsert function, called through PostgREST's ``/rpc``."""

    def __init__(self, url: str, key: str, timeout: float = 10.0) -> None:
        import httpx
        from supabase import ClientOptions, create_client

        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))
        self.client = create_client(url, key, options=ClientOptions(httpx_client=self.http))

    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome:
        import httpx
        from postgrest.exceptions import APIError

        try:
            response = self.client.rpc("matchenv_upsert_match", {"m": _payload(match, scraped_at)}).execute()
        except (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError) as exc:
            raise StoreUnavailable(f"supabase unreachable: {exc.__class__.__name__}") from exc
        except APIError as exc:
            code = str(exc.code or "")
            if code in {"40001", "40P01", "57014", "55P03", "53300"}:
                raise TransientStoreError(f"{code}: {exc.message}") from exc
            if code.startswith("PGRST0") or code in {"503", "502", "504"}:  # PostgREST cannot reach the database
                raise StoreUnavailable(f"{code}: {exc.message}") from exc
            raise PermanentStoreError(f"{code}: {exc.message}") from exc
        return _outcome(response.data)

    def close(self) -> None:
        self.http.close()


def make_store(config: DatabaseConfig) -> Store:
    if config.kind == "supabase":
        assert config.key is not None
        return SupabaseStore(config.url.get_secret_value(), config.key.get_secret_value())
    return PostgresStore(config.url.get_secret_value(), auto_migrate=config.migrate)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__

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
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypeVar

import psycopg
from psycopg import errors as pg_errors

from matchenv.match import Match
from matchenv.workers.config import DatabaseConfig

log = logging.getLogger("matchenv.worker")

Outcome = Literal["created", "updated", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("created", "updated", "skipped")


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The database cannot be reached: wait for it (the message stays unacknowledged), never dead-letter."""


class StoreRefused(StoreUnavailable):
    """The database answers but refuses every write, whatever the match: credentials, permissions, a read-only
    database (after a fail-over), a missing table or schema, resources exhausted. Hold the messages (never
    dead-letter the whole feed), report not ready with this reason, try again with a back-off."""


class TransientStoreError(StoreError):
    """Worth another try soon: serialization failure, deadlock, statement timeout."""


class PermanentStoreError(StoreError):
    """Will fail the same way again: dead-letter the message with this reason."""


Stamped = tuple[Match, dt.datetime | None]  # a match and when the publisher read it


class Store(Protocol):
    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome: ...
    def upsert_many(self, matches: Sequence[Stamped]) -> list[Outcome]:
        """All in one transaction, in order; any error fails them all (store them one by one to find it)."""
        ...
    def close(self) -> None: ...


def _payload_json(match: Match, scraped_at: dt.datetime | None) -> str:
    """The upsert's argument as JSON text: the match's fields, and when the publisher read it (``scraped_at``; null:
    unstamped, last writer wins). The match is encoded by pydantic's core: ~2 µs, against ~5 for ``model_dump``
    then ``json.dumps``."""
    stamp = json.dumps(scraped_at.isoformat()) if scraped_at else "null"
    return f'{match.model_dump_json()[:-1]},"scraped_at":{stamp}}}'


def _payload(match: Match, scraped_at: dt.datetime | None) -> dict[str, Any]:
    """:func:`_payload_json` as a value (PostgREST's client encodes it again)."""
    payload: dict[str, Any] = json.loads(_payload_json(match, scraped_at))
    return payload


def _outcome(value: Any) -> Outcome:
    if value not in OUTCOMES:
        raise PermanentStoreError(f"matchenv_upsert_match answered {value!r}")
    result: Outcome = value
    return result


def _outcomes(value: Any, count: int) -> list[Outcome]:
    if not isinstance(value, list) or len(value) != count:
        raise PermanentStoreError(f"matchenv_upsert_matches answered {str(value)[:200]} for {count} matches")
    return [_outcome(v) for v in value]


_T = TypeVar("_T")
# SQLSTATE classes an error of one match's data raises: data exception, integrity, cardinality, a function's own
# RAISE. Any other refusal is taken as the store's own (privilege, read-only, undefined table, resources...):
# holding a feed is recoverable, dead-lettering all of it is not.
_MESSAGE_CLASSES = ("21", "22", "23", "2F", "39", "P0")
_TRANSIENT_PG = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.QueryCanceled,
                 pg_errors.LockNotAvailable, pg_errors.TooManyConnections, pg_errors.AdminShutdown,
                 pg_errors.CannotConnectNow)


class _SchemaMissing(Exception):
    pass


class _FunctionMissing(StoreUnavailable):
    """Supabase: the database lacks a function of the schema (migrations are its owner's job there)."""


# A half-open connection (a peer gone without a word, a dropped route) fails within about a minute instead of
# hanging the storing thread: TCP keepalives after 30 s idle, and unacknowledged writes given up after 60 s.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                              "keepalives_count": 3, "tcp_user_timeout": 60_000}


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
                                       options=f"-c statement_timeout={self.statement_timeout_ms}", **KEEPALIVES)
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"database unreachable: {_first_line(exc)}") from exc
            self._local.conn = conn
        return conn

    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome:
        return self._migrating(lambda: _outcome(self._call("select matchenv_upsert_match(%s::jsonb)",
                                                           _payload_json(match, scraped_at))))

    def upsert_many(self, matches: Sequence[Stamped]) -> list[Outcome]:
        payload = f"[{','.join(_payload_json(match, stamp) for match, stamp in matches)}]"
        return self._migrating(lambda: _outcomes(self._call("select matchenv_upsert_matches(%s::jsonb)", payload),
                                                 len(matches)))

    def _migrating(self, call: Callable[[], _T]) -> _T:
        """``call``; when the schema is missing (or older than this worker), migrate and call again."""
        try:
            return call()
        except _SchemaMissing:
            if not self.auto_migrate:
                raise StoreUnavailable("the matchenv schema is missing or old: run `matchenv db migrate`") from None
        from matchenv.workers.migrate import migrate

        try:
            applied = migrate(self.url, timeout=self.connect_timeout)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"the schema is missing and migrating failed: {_first_line(exc)}") from exc
        log.info("schema migrated (%s)", ", ".join(applied) or "by another worker")
        try:
            return call()
        except _SchemaMissing:
            raise StoreUnavailable("the matchenv schema is still missing after migrating") from None

    def _call(self, sql: str, payload: str) -> Any:
        """One statement with one jsonb argument (JSON text), its one value."""
        conn = self._conn()
        try:
            row = conn.execute(sql, (payload,)).fetchone()
        except _TRANSIENT_PG as exc:
            self._drop()
            raise TransientStoreError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        except psycopg.OperationalError as exc:
            self._drop()
            raise StoreUnavailable(f"database connection lost: {_first_line(exc)}") from exc
        except pg_errors.UndefinedFunction as exc:
            raise _SchemaMissing from exc
        except psycopg.Error as exc:
            refused = _refusal(exc.sqlstate or "", f"{type(exc).__name__}: {_first_line(exc)}")
            if refused is not None:
                raise refused from exc
            raise PermanentStoreError(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return row[0] if row else None

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
        self.one_by_one = False  # the database has no batch function

    def upsert(self, match: Match, scraped_at: dt.datetime | None = None) -> Outcome:
        return _outcome(self._rpc("matchenv_upsert_match", {"m": _payload(match, scraped_at)}))

    def upsert_many(self, matches: Sequence[Stamped]) -> list[Outcome]:
        if self.one_by_one:
            return [self.upsert(match, stamp) for match, stamp in matches]
        payload = [_payload(match, stamp) for match, stamp in matches]
        try:
            return _outcomes(self._rpc("matchenv_upsert_matches", {"ms": payload}), len(payload))
        except _FunctionMissing:  # a database migrated before batches existed: still correct, only slower
            log.warning("matchenv_upsert_matches is missing (run `matchenv db migrate`); storing one by one")
            self.one_by_one = True
            return [self.upsert(match, stamp) for match, stamp in matches]

    def _rpc(self, function: str, params: dict[str, Any]) -> Any:
        import httpx
        from postgrest.exceptions import APIError

        try:
            response = self.client.rpc(function, params).execute()
        except (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError) as exc:
            raise StoreUnavailable(f"supabase unreachable: {exc.__class__.__name__}") from exc
        except APIError as exc:
            code = str(exc.code or "")
            if code in {"PGRST202", "42883"}:  # no such function (PostgREST's schema cache, or PostgreSQL)
                raise _FunctionMissing(f"{code}: {exc.message}") from exc
            if code in {"40001", "40P01", "57014", "55P03", "53300"}:
                raise TransientStoreError(f"{code}: {exc.message}") from exc
            if code.startswith("PGRST0") or code in {"503", "502", "504"}:  # PostgREST cannot reach the database
                raise StoreUnavailable(f"{code}: {exc.message}") from exc
            # PGRST1xx/2xx/3xx: the request, the schema cache, the JWT; a bare HTTP status or no code at all: a
            # gateway (an invalid API key, a rate limit). None of them is one match's fault.
            refused = _refusal(_sqlstate(code), f"{code or 'HTTP error'}: {exc.message}")
            if refused is not None:
                raise refused from exc
            raise PermanentStoreError(f"{code}: {exc.message}") from exc
        return response.data

    def close(self) -> None:
        self.http.close()


def _sqlstate(code: str) -> str:
    """PostgREST's error code as a PostgreSQL SQLSTATE (five letters and digits), "" for its own PGRST codes, a bare
    HTTP status ("401") or none."""
    return code if len(code) == 5 and code.isalnum() and not code.startswith("PGRST") else ""


def _refusal(sqlstate: str, text: str) -> StoreRefused | None:
    """A StoreRefused unless ``sqlstate`` names an error of one match's data (then None: dead-letter that one)."""
    if sqlstate[:2] in _MESSAGE_CLASSES:
        return None
    hint = {"42501": "permission denied", "25006": "the database is read-only", "42P01": "a table is missing",
            "28000": "the credentials are refused", "28P01": "the password is refused"}.get(sqlstate)
    return StoreRefused(f"the database refuses every write ({hint}): {text}" if hint else
                        f"the database refuses every write: {text}")


def make_store(config: DatabaseConfig) -> Store:
    if config.kind == "supabase":
        assert config.key is not None
        return SupabaseStore(config.url.get_secret_value(), config.key.get_secret_value())
    return PostgresStore(config.url.get_secret_value(), auto_migrate=config.migrate)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__

"""SQL migrations shipped in the package, applied in order, once each, under an advisory lock."""

from __future__ import annotations

from importlib import resources

import psycopg

LOCK_KEY = 0x6D61746368656E76  # "matchenv"


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) pairs in order, e.g. ("001_matches", "create table ...")."""
    folder = resources.files("matchenv.workers") / "migrations"
    files = sorted((f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), sql) for name, sql in files]


def migrate(database_url: str, timeout: float = 10.0) -> list[str]:
    """Apply what is missing; return the versions applied now. Safe to run concurrently and repeatedly."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True, connect_timeout=int(timeout)) as conn:
        conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute("create table if not exists matchenv_schema_migrations "
                         "(version text primary key, applied_at timestamptz not null default now())")
            done = {row[0] for row in conn.execute("select version from matchenv_schema_migrations")}
            for version, sql in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute("insert into matchenv_schema_migrations (version) values (%s)", (version,))
                applied_now.append(version)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now

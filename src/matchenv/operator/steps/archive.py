"""Step: the archive of an environment's exchange (a stream the backfill replays from), kept while anything is bound
to that exchange; shared by every environment on it, so looked at once per broker and pass."""

from __future__ import annotations

import logging
from typing import Any

from matchenv.connection import BrokerConnection
from matchenv.operator.context import Context, Services
from matchenv.topology.client import BrokerError
from matchenv.topology.desired import DesiredArchive, desired_archive
from matchenv.topology.planner import plan_archive, plan_archive_detach

log = logging.getLogger("matchenv.operator")


def archive_of(s: Services, ctx: Context) -> DesiredArchive:
    settings = s.settings
    return desired_archive(ctx.spec.broker.vhost, ctx.spec.exchange.name, ctx.spec.exchange.type.value,
                           settings.archive_max_age, settings.archive_max_bytes, settings.archive_segment_bytes)


def ensure_archive(s: Services, ctx: Context, conn: BrokerConnection, client: Any) -> str | None:
    """The archive of the environment's exchange (once per broker, vhost and exchange, and at each resync pass);
    why a backfill cannot use it, if so. Runs after the topology: the exchange exists."""
    if s.settings.archive == "off":
        return "the operator keeps no archive (MATCHENV_ARCHIVE=off): there is nothing to backfill from"
    archive = archive_of(s, ctx)
    key = _ensured_key(conn, archive)
    if s.ensured_already(ctx, key):
        return None
    try:
        snapshot = s.snapshot(conn, client, ctx.prefetched, archive.scope())
        plan = plan_archive(archive, snapshot)
        if plan.actions:
            s.apply(ctx, client, plan.actions)
    except BrokerError as exc:
        log.warning("the archive %s: %s", archive.name, exc)
        return f"cannot keep the archive {archive.name}: {exc}"
    if plan.problems:
        return "; ".join(plan.problems)
    s.mark_ensured(ctx, key)
    return None


def release_archive(s: Services, ctx: Context, conn: BrokerConnection, client: Any) -> list[str]:
    """When nothing is bound to an exchange any more (this environment was the last, of any cluster or Secret), the
    archive stops following it (and keeps what it holds): with no environment bound, a publish is reported
    unroutable, as it should be. Returns what was done (the teardown says it in its own Event); nothing when a
    check of the same exchange was under way (that one checks again after it, for this teardown)."""
    if s.settings.archive == "off":
        return []
    archive = archive_of(s, ctx)
    key = _ensured_key(conn, archive)
    done: list[str] = []

    def check() -> None:
        plan = plan_archive_detach(archive, client.snapshot(archive.release_scope()))
        if plan.actions:
            s.ensured.discard(key)
        done.extend(s.apply(ctx, client, plan.actions, announce=False))

    # one check of an exchange at a time: each reads every binding of it, so 2,000 teardowns at once each making
    # their own was quadratic; one under way checks again for those who asked meanwhile
    s.releases.run(key, check)
    return done


def _ensured_key(conn: BrokerConnection, archive: DesiredArchive) -> tuple[str, ...]:
    """The archive's key in ``Services.ensured``: marked where it is kept, dropped where it stops following."""
    return (*conn.key, archive.vhost, archive.exchange)

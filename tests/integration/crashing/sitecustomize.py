"""Loaded into a test worker through PYTHONPATH: the store makes the whole worker process exit on the match whose
external_match_id is $MATCHENV_TEST_CRASH_ON, the way an out-of-memory kill or a native crash would. Test-only."""

import os

from matchenv.workers import stores

_upsert = stores.PostgresStore.upsert
_upsert_many = stores.PostgresStore.upsert_many


def _crash_on(match) -> None:  # type: ignore[no-untyped-def]
    if match.external_match_id == os.environ.get("MATCHENV_TEST_CRASH_ON"):
        os._exit(3)


def _crashing_upsert(self, match, scraped_at=None):  # type: ignore[no-untyped-def]
    _crash_on(match)
    return _upsert(self, match, scraped_at)


def _crashing_upsert_many(self, matches):  # type: ignore[no-untyped-def]
    for match, _ in matches:
        _crash_on(match)
    return _upsert_many(self, matches)


stores.PostgresStore.upsert = _crashing_upsert  # type: ignore[method-assign]
stores.PostgresStore.upsert_many = _crashing_upsert_many  # type: ignore[method-assign]

"""Loaded into a test worker through PYTHONPATH: the store makes the whole worker process exit on the match whose
external_match_id is $MATCHENV_TEST_CRASH_ON, the way an out-of-memory kill or a native crash would. Test-only."""

import os

from matchenv.workers import stores

_upsert = stores.PostgresStore.upsert


def _crashing_upsert(self, match, scraped_at=None):  # type: ignore[no-untyped-def]
    if match.external_match_id == os.environ.get("MATCHENV_TEST_CRASH_ON"):
        os._exit(3)
    return _upsert(self, match, scraped_at)


stores.PostgresStore.upsert = _crashing_upsert  # type: ignore[method-assign]

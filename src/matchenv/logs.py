"""How the command-line processes log (worker, scrape, backfill): plain text, or with ``--log-json`` (or
``MATCHENV_LOG_JSON=true``) one JSON object per line carrying the fields that say whose line it is — namespace,
environment, queue — and, where a line is about one match, its ``match_id``, ``outcome`` or ``reason``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pythonjsonlogger.json import JsonFormatter

JSON_ENV = "MATCHENV_LOG_JSON"
TEXT_FORMAT = "[%(asctime)s] %(name)s %(levelname)s %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def json_wanted(flag: bool, environ: Mapping[str, str]) -> bool:
    """``--log-json``, or the environment variable a Deployment or CronJob sets."""
    return flag or environ.get(JSON_ENV, "").strip().lower() in ("1", "true", "yes")


def configure(level: str | int, json: bool, fields: Mapping[str, str | None] | None = None,
              text_format: str = TEXT_FORMAT) -> None:
    """The root logger writes to stderr at ``level``: ``text_format``, or JSON with ``fields`` on every line (those
    without a value are left out)."""
    handler = logging.StreamHandler()
    if json:
        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields=RENAMED,
                                           static_fields={k: v for k, v in (fields or {}).items() if v}))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # Python's warnings (a library's) as log lines too, not bare text on stderr

"""What one task message carries: the match (validated), the publisher's stamp, or why it cannot be stored (pure;
the worker's consumer and its batches both read messages through it)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from matchenv.contracts import SCRAPED_AT_HEADER
from matchenv.match import Match
from matchenv.workers.deadletter import Body

REQUEUE_DELAY = 5.0  # a valid match that cannot be stored and has no DLQ goes back after this pause


class Stopping(Exception):
    """The worker stops while messages still wait for the database: they go back to the queue."""


@dataclass(frozen=True)
class Invalid:
    """A task message whose arguments are not one valid match: what to dead-letter, and why."""

    body: Body
    problems: str


def parse(args: Any, kwargs: Any, stamp: dt.datetime | None = None, now: dt.datetime | None = None
          ) -> tuple[Match, dict[str, Any]] | Invalid:
    """The match a task message carries (and its raw form, for the dead-letter queue), or why there is none (also
    when the publisher's ``stamp`` cannot be trusted at ``now``: :func:`stamp_problem`)."""
    if isinstance(args, list | tuple) and len(args) == 1 and not kwargs:
        raw = args[0]
    elif not args and isinstance(kwargs, dict) and set(kwargs) == {"match_data"}:
        raw = kwargs["match_data"]
    else:
        raw = None
    if not isinstance(raw, dict):
        return Invalid({"args": list(args) if isinstance(args, list | tuple) else args, "kwargs": kwargs},
                       "expected one match object as the only argument")
    try:
        match = Match.model_validate(raw)
    except ValidationError as exc:
        return Invalid(raw, "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'match'}: {e['msg']}"
                                      for e in exc.errors()))
    problem = stamp_problem(stamp, now)
    return Invalid(raw, problem) if problem else (match, raw)


# a protocol-2 body as our publisher writes it: [[match], {}, embed]
_PROTOCOL_2 = TypeAdapter(tuple[tuple[Match], dict[str, Any], Any])


def parse_body(body: bytes | str) -> Match | None:
    """The match of a protocol-2 JSON body ``[[match], {}, embed]``, decoded and validated in one pass of pydantic's
    core (~10 µs, against ~15 for kombu's JSON decoder then the model); None for any other body, which
    :func:`parse` reads the long way and says what is wrong with."""
    try:
        (match,), kwargs, _ = _PROTOCOL_2.validate_json(body)
    except ValidationError:
        return None
    return None if kwargs else match


def scraped_at(request: Any) -> dt.datetime | None:
    """The publisher's stamp (message header ``x-matchenv-scraped-at``), None when absent or unreadable."""
    value = getattr(request, SCRAPED_AT_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(SCRAPED_AT_HEADER)
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


STAMP_AHEAD_LIMIT = dt.timedelta(minutes=5)  # a publisher's stamp further ahead of this worker's clock is refused


def stamp_problem(stamp: dt.datetime | None, now: dt.datetime | None = None) -> str | None:
    """Why the publisher's stamp cannot be trusted, or None. A stamp from the future would make every later real
    update of the match look older than the row and be skipped: more than five minutes ahead (clock skew allowed)
    the message is dead-lettered as ``invalid`` instead."""
    if stamp is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    if stamp - now <= STAMP_AHEAD_LIMIT:
        return None
    return (f"header {SCRAPED_AT_HEADER} is {stamp.isoformat()}, {(stamp - now).total_seconds():.0f} s ahead of "
            f"this worker's clock (at most {STAMP_AHEAD_LIMIT.total_seconds():.0f} s allowed): a stamp from the "
            "future would make every later update of this match be skipped")

"""What ``matchenv status`` prints, from the environments' status and their workers' newest stored stamp (pure)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

# the broker Secret an environment names ("" for the operator's), vhost, exchange, routing keys ("": all of it)
Feed = tuple[str, str, str, str]


@dataclass(frozen=True)
class EnvironmentLine:
    namespace: str
    name: str
    phase: str | None
    exchange: str | None
    backlog: int | None  # ready + unacknowledged in its queue
    dead_letters: int | None
    newest_stored: float | None  # the newest scrape stamp its running workers stored (Unix time); None: unknown
    behind_messages: int | None  # its backlog beyond the smallest of its feed
    # the feed's newest stored stamp minus its own; with no worker to ask, minus when its oldest waiting message
    # was published (status.oldestMessageTime: it holds nothing newer), which is then the least it is behind
    behind_seconds: float | None
    behind_at_least: bool = False

    def as_json(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["newest_stored"] = _rfc3339(self.newest_stored)
        return fields


def feed_of(environment: dict[str, Any]) -> Feed:
    """The feed an environment reads: environments of one feed receive the same matches (a subset by routing keys
    is a feed of its own)."""
    spec, status = environment.get("spec") or {}, environment.get("status") or {}
    broker = spec.get("broker") or {}
    secret = (broker.get("connectionSecretRef") or {}).get("name") or ""
    namespace = environment["metadata"]["namespace"] if secret else ""
    exchange = status.get("exchange") or (spec.get("exchange") or {}).get("name") or ""
    keys = ",".join(sorted((spec.get("queue") or {}).get("routingKeys") or []))
    return f"{namespace}/{secret}" if secret else "", str(broker.get("vhost") or "/"), str(exchange), keys


def overview(environments: list[dict[str, Any]], newest: dict[tuple[str, str], float | None]
             ) -> list[EnvironmentLine]:
    """One line per environment (sorted by namespace, name); ``newest``: (namespace, name) → stamp."""
    feeds: dict[Feed, list[dict[str, Any]]] = defaultdict(list)
    for environment in environments:
        feeds[feed_of(environment)].append(environment)
    lines = []
    for members in feeds.values():
        backlogs = [_int((m.get("status") or {}).get("messages")) for m in members]
        known_backlogs = [b for b in backlogs if b is not None]
        stamps = [newest.get(_key(m)) for m in members]
        known_stamps = [s for s in stamps if s is not None]
        for member, backlog, stamp in zip(members, backlogs, stamps, strict=True):
            status = member.get("status") or {}
            held = stamp if stamp is not None else _oldest_waiting(status) if backlog else None
            lines.append(EnvironmentLine(
                namespace=member["metadata"]["namespace"], name=member["metadata"]["name"],
                phase=status.get("phase"), exchange=status.get("exchange"), backlog=backlog,
                dead_letters=_int(status.get("deadLetterMessages")), newest_stored=stamp,
                behind_messages=None if backlog is None else backlog - min(known_backlogs),
                behind_seconds=None if held is None or not known_stamps else max(0.0, max(known_stamps) - held),
                behind_at_least=stamp is None and held is not None))
    return sorted(lines, key=lambda line: (line.namespace, line.name))


def render(lines: list[EnvironmentLine], now: float) -> str:
    """A table as kubectl prints one; "-" for what is not known (no status yet, no running worker to ask)."""
    header = ("NAMESPACE", "NAME", "PHASE", "EXCHANGE", "BACKLOG", "DEAD-LETTERS", "NEWEST-STORED", "BEHIND")
    rows = [header] + [(
        line.namespace, line.name, line.phase or "-", line.exchange or "-", _text(line.backlog),
        _text(line.dead_letters),
        "-" if line.newest_stored is None else f"{_rfc3339(line.newest_stored)} ({_age(now - line.newest_stored)} ago)",
        _behind(line)) for line in lines]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _behind(line: EnvironmentLine) -> str:
    if line.behind_messages is None and line.behind_seconds is None:
        return "-"
    messages = "? messages" if line.behind_messages is None else f"{line.behind_messages} messages"
    seconds = "?" if line.behind_seconds is None else ("at least " if line.behind_at_least else "") + _age(
        line.behind_seconds)
    return f"{messages}, {seconds}"


def _oldest_waiting(status: dict[str, Any]) -> float | None:
    value = status.get("oldestMessageTime")
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _key(environment: dict[str, Any]) -> tuple[str, str]:
    return environment["metadata"]["namespace"], environment["metadata"]["name"]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def _rfc3339(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return dt.datetime.fromtimestamp(stamp, dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _age(seconds: float) -> str:
    """1h2m, 3m4s, 5s."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"

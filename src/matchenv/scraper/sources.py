"""Where matches come from: a file the existing scraper wrote (JSON array or JSON lines), or synthetic ones."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUBS = [
    "Chicago Fire Juniors", "Indiana Fire Academy", "Sporting KC Academy", "Real Salt Lake AZ", "FC Dallas Youth",
    "Houston Dynamo Academy", "LA Galaxy Academy", "Seattle Sounders Academy", "Philadelphia Union II",
    "New York Red Bulls Academy", "Atlanta United Academy", "Columbus Crew Academy", "St. Louis City Academy",
    "Minnesota United Academy", "Colorado Rapids Academy", "Portland Timbers Academy", "Orlando City Academy",
    "Nashville SC Academy", "Austin FC Academy", "Charlotte FC Academy",
]
DIVISIONS = [("Northeast", 41), ("Central", 42), ("Southeast", 43), ("Frontier", 44), ("Southwest", 45),
             ("Northwest", 46)]
VENUES = ["Toyota Park", "SeatGeek Stadium", "Children's Mercy Park", "Zions Bank Stadium", "Toyota Stadium"]
AGE_GROUPS = ["U13", "U14", "U15", "U16", "U17", "U19"]


@dataclass(frozen=True)
class RawMatch:
    """One input record; ``problem`` is set when the record could not even be read as JSON."""

    position: int  # 1-based index (array) or line number (JSON lines)
    data: Any
    problem: str | None = None


def from_file(path: Path) -> Iterator[RawMatch]:
    """A JSON array of matches, or one match per line (JSON lines), as the existing scraper writes them."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawMatch(exc.lineno, None, f"not valid JSON: {exc.msg} (line {exc.lineno})")
            return
        for i, item in enumerate(items, start=1):
            yield RawMatch(i, item)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield RawMatch(number, json.loads(line))
        except json.JSONDecodeError as exc:
            yield RawMatch(number, None, f"not valid JSON: {exc.msg}")


def synthetic(count: int, seed: int = 2025, start: int = 0) -> Iterator[RawMatch]:
    """``count`` realistic matches. Match ``i`` of a seed is always the same, with ``external_match_id``
    ``synthetic-<seed>-<i>``, so a repeated run updates or skips rather than adding rows."""
    for i in range(start, start + count):
        rng = random.Random(f"{seed}:{i}")
        home, away = rng.sample(CLUBS, 2)
        division, division_id = rng.choice(DIVISIONS)
        date = dt.date(2024, 8, 24) + dt.timedelta(days=rng.randrange(0, 280))
        status = "completed" if date < dt.date(2025, 4, 1) else rng.choice(["scheduled", "completed", "tbd"])
        match: dict[str, Any] = {
            "home_team": home,
            "away_team": away,
            "match_date": date.isoformat(),
            "match_time": f"{rng.randrange(9, 20):02d}:{rng.choice(['00', '30'])}",
            "season": "2024-25",
            "age_group": rng.choice(AGE_GROUPS),
            "match_type": rng.choice(["League", "League", "League", "Playoff", "Showcase"]),
            "division": division,
            "division_id": division_id,
            "league": rng.choice(["Homegrown", "Academy"]),
            "match_status": status,
            "external_match_id": f"synthetic-{seed}-{i}",
            "location": rng.choice(VENUES),
            "source": "matchenv-synthetic",
        }
        if status == "completed":
            match["home_score"] = rng.randrange(0, 6)
            match["away_score"] = rng.randrange(0, 5)
        yield RawMatch(i + 1, match)

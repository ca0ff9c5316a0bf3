"""The Match message: one match result as the scraper publishes it and the workers store it (DESIGN §5)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator


class League(StrEnum):
    HOMEGROWN = "Homegrown"
    ACADEMY = "Academy"


class MatchStatus(StrEnum):
    SCHEDULED = "scheduled"
    TBD = "tbd"
    COMPLETED = "completed"
    POSTPONED = "postponed"
    CANCELLED = "cancelled"


NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

# Longest text matchenv stores per Match field (characters); a longer value is refused by the publisher and
# dead-lettered by the worker with reason 'invalid' naming the field.
TEXT_LIMITS = {"home_team": 200, "away_team": 200, "season": 20, "age_group": 20, "match_type": 50,
               "division": 200, "external_match_id": 200, "location": 500, "notes": 2000, "source": 200}


INT4_MAX = 2_147_483_647  # the integer columns' largest value


class Match(BaseModel):
    """One match result as the scraper publishes it (the message payload, DESIGN §5). Text fields are bounded by
    ``TEXT_LIMITS``."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    home_team: NonEmpty = Field(max_length=TEXT_LIMITS["home_team"])
    away_team: NonEmpty = Field(max_length=TEXT_LIMITS["away_team"])
    match_date: dt.date
    season: NonEmpty = Field(max_length=TEXT_LIMITS["season"])
    age_group: NonEmpty = Field(max_length=TEXT_LIMITS["age_group"])
    match_type: NonEmpty = Field(max_length=TEXT_LIMITS["match_type"])
    match_time: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] | None = None
    division: str | None = Field(None, max_length=TEXT_LIMITS["division"])
    division_id: int | None = Field(None, ge=1, le=INT4_MAX)
    league: League | None = None
    home_score: int | None = Field(None, ge=0, le=INT4_MAX)
    away_score: int | None = Field(None, ge=0, le=INT4_MAX)
    match_status: MatchStatus | None = None
    external_match_id: str | None = Field(None, max_length=TEXT_LIMITS["external_match_id"])
    location: str | None = Field(None, max_length=TEXT_LIMITS["location"])
    notes: str | None = Field(None, max_length=TEXT_LIMITS["notes"])
    source: str | None = Field(None, max_length=TEXT_LIMITS["source"])

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL character, which PostgreSQL cannot store")
        return value

    def natural_key(self) -> tuple[str, str, dt.date, str]:
        """The fallback identity when there is no ``external_match_id``."""
        return (self.home_team, self.away_team, self.match_date, self.age_group)

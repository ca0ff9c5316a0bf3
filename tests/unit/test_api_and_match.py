"""The pydantic models: defaults, the invalid corpus, the Match message."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from matchenv.api import DeletionPolicy, ExchangeType, MatchEnvironmentSpec, QueueType
from matchenv.match import Match
from tests.cases import INVALID_CASES, InvalidCase, environment

ENVIRONMENTS = Path(__file__).resolve().parents[2] / "manifests/environments"


def test_defaults_fill_a_minimal_spec() -> None:
    spec = MatchEnvironmentSpec.model_validate(environment()["spec"])
    assert spec.exchange.name == "matches-fanout"
    assert spec.exchange.type is ExchangeType.FANOUT
    assert spec.queue.name is None
    assert spec.queue.resolved_name("staging") == "matches.staging"
    assert spec.queue.type is QueueType.CLASSIC
    assert spec.queue.dead_letter is True
    assert spec.deletion_policy is DeletionPolicy.RETAIN
    assert spec.broker.vhost == "/"
    assert spec.workers.replicas == 2
    assert spec.autoscaling.enabled is False


def test_explicit_queue_name_wins() -> None:
    spec = MatchEnvironmentSpec.model_validate(environment(queue={"name": "custom.q"})["spec"])
    assert spec.queue.resolved_name("staging") == "custom.q"


def test_topic_with_routing_keys_is_valid() -> None:
    spec = MatchEnvironmentSpec.model_validate(
        environment(exchange={"name": "matches-topic", "type": "topic"}, queue={"routingKeys": ["U14.#"]})["spec"]
    )
    assert spec.queue.routing_keys == ["U14.#"]


def test_spec_round_trips_by_alias() -> None:
    raw = environment(queue={"messageTTLSeconds": 60, "maxLength": 10}, deletionPolicy="Delete")["spec"]
    dumped = MatchEnvironmentSpec.model_validate(raw).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["queue"]["messageTTLSeconds"] == 60
    assert dumped["deletionPolicy"] == "Delete"
    assert MatchEnvironmentSpec.model_validate(dumped) == MatchEnvironmentSpec.model_validate(raw)


@pytest.mark.parametrize("path", sorted(ENVIRONMENTS.glob("*/matchenvironment.yaml")), ids=lambda p: p.parent.name)
def test_examples_are_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    MatchEnvironmentSpec.model_validate(doc["spec"])


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_spec_is_refused_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(ValidationError) as info:
        MatchEnvironmentSpec.model_validate(case.manifest["spec"])
    text = " ".join(
        ".".join(str(p) for p in err["loc"]) + " " + err["msg"] for err in info.value.errors()
    )
    assert case.model_loc in text


MATCH = {
    "home_team": "Chicago Fire Juniors", "away_team": "Indiana Fire Academy", "match_date": "2025-10-13",
    "season": "2024-25", "age_group": "U14", "match_type": "League", "division": "Northeast", "division_id": 41,
    "league": "Homegrown", "home_score": 2, "away_score": 1, "match_status": "completed",
    "external_match_id": "mlsnext_12345", "location": "Toyota Park", "source": "match-scraper",
}


def test_match_example_from_the_design_parses() -> None:
    match = Match.model_validate(MATCH)
    assert match.match_date == dt.date(2025, 10, 13)
    assert match.natural_key() == ("Chicago Fire Juniors", "Indiana Fire Academy", dt.date(2025, 10, 13), "U14")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"home_team": ""}, "home_team"),
        ({"home_team": None}, "home_team"),
        ({"home_score": -1}, "home_score"),
        ({"league": "Premier"}, "league"),
        ({"match_date": "13/10/2025"}, "match_date"),
        ({"match_time": "25:00"}, "match_time"),
        ({"division_id": 0}, "division_id"),
        ({"match_status": "abandoned"}, "match_status"),
    ],
)
def test_invalid_match_is_refused(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Match.model_validate({**MATCH, **change})
    assert field in {str(err["loc"][0]) for err in info.value.errors()}


def test_missing_required_match_field_is_refused() -> None:
    body = {k: v for k, v in MATCH.items() if k != "away_team"}
    with pytest.raises(ValidationError, match="away_team"):
        Match.model_validate(body)

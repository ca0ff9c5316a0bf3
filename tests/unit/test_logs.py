"""The command-line processes' logs: with --log-json (or MATCHENV_LOG_JSON) one JSON object per line, carrying
whose line it is and, for one match, its id, outcome or reason; plain text otherwise."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from matchenv import logs
from matchenv.contracts import owner_namespace


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_json_lines_carry_whose_line_it_is_and_the_match(root: logging.Logger,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", json=True, fields={"namespace": "team-a", "environment": "dev", "queue": "matches.dev",
                                              "exchange": None})
    logging.getLogger("matchenv.worker").warning("dead-lettered a %s message", "invalid",
                                                 extra={"reason": "invalid", "match_id": "m1"})
    logging.getLogger("matchenv.worker").debug("not at INFO")
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ("level", "logger", "message", "namespace", "environment", "queue", "reason",
                                    "match_id")} == {
        "level": "WARNING", "logger": "matchenv.worker", "message": "dead-lettered a invalid message",
        "namespace": "team-a", "environment": "dev", "queue": "matches.dev", "reason": "invalid", "match_id": "m1"}
    assert "exchange" not in record  # a field without a value is left out
    assert record["time"]


def test_text_unless_asked_and_the_switch_from_the_environment(root: logging.Logger,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", json=logs.json_wanted(False, {}), fields={"queue": "q"})
    logging.getLogger("x").info("plain")
    assert capsys.readouterr().err.rstrip().endswith("x INFO plain")
    assert logs.json_wanted(False, {"MATCHENV_LOG_JSON": "true"})
    assert logs.json_wanted(True, {})
    assert not logs.json_wanted(False, {"MATCHENV_LOG_JSON": "false"})


def test_the_namespace_comes_from_the_ownership_marker() -> None:
    assert owner_namespace("c1/team-a/dev") == "team-a"
    assert owner_namespace("team-a/dev") == "team-a"  # a legacy marker
    assert owner_namespace("") is None
    assert owner_namespace(None) is None

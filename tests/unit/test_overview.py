"""``matchenv status``: each environment's lag behind the most advanced one of its feed, from status and the
workers' newest stored stamp."""

from __future__ import annotations

from typing import Any

from matchenv.overview.lines import overview, render
from matchenv.overview.reader import parse_newest


def _env(name: str, messages: int | None, namespace: str = "default", exchange: str = "matches-fanout",
         routing_keys: list[str] | None = None, vhost: str = "/", phase: str = "Ready",
         dead_letters: int | None = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {"broker": {"vhost": vhost}}
    if routing_keys:
        spec["queue"] = {"routingKeys": routing_keys}
    status: dict[str, Any] = {"phase": phase, "exchange": exchange}
    if messages is not None:
        status["messages"] = messages
    if dead_letters is not None:
        status["deadLetterMessages"] = dead_letters
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec, "status": status}


def test_a_paused_environment_is_behind_by_its_backlog_and_the_time_since_its_newest_match() -> None:
    envs = [_env("prod", 0), _env("dev", 500, phase="Paused"), _env("staging", 2)]
    newest = {("default", "prod"): 1_000_100.0, ("default", "dev"): 1_000_000.0, ("default", "staging"): 1_000_100.0}
    lines = {line.name: line for line in overview(envs, newest)}
    assert (lines["dev"].behind_messages, lines["dev"].behind_seconds) == (500, 100.0)
    assert (lines["prod"].behind_messages, lines["prod"].behind_seconds) == (0, 0.0)
    assert lines["staging"].behind_messages == 2  # two in flight: not yet stored


def test_with_no_worker_to_ask_the_time_behind_runs_from_its_oldest_waiting_message() -> None:
    """Paused dev: no worker says what it stored; the oldest message waiting in its queue was published at
    1,000,040 (status.oldestMessageTime), so it holds nothing newer: 60 s behind prod's newest."""
    paused = _env("dev", 500, phase="Paused")
    paused["status"]["oldestMessageTime"] = "1970-01-12T13:47:20Z"  # 1,000,040
    level = _env("idle", 0, phase="Paused")
    level["status"]["oldestMessageTime"] = "1970-01-12T13:47:20Z"  # stale: an empty queue waits for nothing
    lines = {line.name: line for line in overview([_env("prod", 0), paused, level],
                                                  {("default", "prod"): 1_000_100.0})}
    assert (lines["dev"].newest_stored, lines["dev"].behind_messages, lines["dev"].behind_seconds) == \
        (None, 500, 60.0)
    assert lines["idle"].behind_seconds is None  # nothing waits and no worker to ask: not known
    assert lines["dev"].behind_at_least
    assert "500 messages, at least 1m0s" in render(list(lines.values()), now=1_000_200.0)


def test_feeds_are_compared_only_with_themselves() -> None:
    envs = [_env("prod", 0), _env("u14", 9, routing_keys=["U14.#"]), _env("cups", 7, exchange="cups-fanout"),
            _env("prod", 3, namespace="team-b", vhost="team-b")]
    newest = {("default", "prod"): 50.0, ("default", "u14"): 10.0, ("default", "cups"): 20.0,
              ("team-b", "prod"): 5.0}
    lines = overview(envs, newest)
    assert [(line.namespace, line.name, line.behind_messages, line.behind_seconds) for line in lines] == [
        ("default", "cups", 0, 0.0), ("default", "prod", 0, 0.0), ("default", "u14", 0, 0.0),
        ("team-b", "prod", 0, 0.0)]


def test_what_is_not_known_is_shown_as_not_known() -> None:
    envs = [_env("prod", 0), _env("dev", None, phase="Pending", dead_letters=None)]
    lines = {line.name: line for line in overview(envs, {("default", "prod"): 100.0, ("default", "dev"): None})}
    assert (lines["dev"].backlog, lines["dev"].behind_messages, lines["dev"].behind_seconds) == (None, None, None)
    table = render(sorted(lines.values(), key=lambda line: line.name), now=130.0).splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "PHASE", "EXCHANGE", "BACKLOG", "DEAD-LETTERS", "NEWEST-STORED",
                                "BEHIND"]
    assert table[1].split() == ["default", "dev", "Pending", "matches-fanout", "-", "-", "-", "-"]
    assert table[2].split() == ["default", "prod", "Ready", "matches-fanout", "0", "0", "1970-01-01T00:01:40Z",
                                "(30s", "ago)", "0", "messages,", "0s"]


def test_the_newest_stamp_is_read_from_a_workers_metrics_page() -> None:
    page = ("# HELP matchenv_worker_newest_stored_scrape_timestamp_seconds x\n"
            "# TYPE matchenv_worker_newest_stored_scrape_timestamp_seconds gauge\n"
            "matchenv_worker_newest_stored_scrape_timestamp_seconds 1.7962403e+09\n")
    assert parse_newest(page) == 1.7962403e09
    assert parse_newest(page.replace("1.7962403e+09", "0.0")) is None  # nothing stored since it started
    assert parse_newest("# nothing here\n") is None

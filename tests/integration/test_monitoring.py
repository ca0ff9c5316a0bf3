"""What the monitoring component (manifests/components/monitoring, the chart's copy) ships, checked by Debian's
``promtool``: every rule and every dashboard query parses, every annotation template renders, each alert fires and
resolves in its unit test; the chart ships the same files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from matchenv_devkit.services.prometheus import DASHBOARD, PROMETHEUS_RULE, dashboard_queries, rules, write_rules

TESTS = Path(__file__).parent / "monitoring" / "alert_rules_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: `make system-deps` installs Debian's prometheus package"
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_every_rule_and_annotation_template_parses(promtool: str, tmp_path: Path) -> None:
    shipped = rules()
    result = _run(promtool, "check", "rules", str(write_rules(tmp_path / "rules.yaml", shipped)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in shipped['groups'])} rules found" in result.stdout


def test_each_alert_fires_and_resolves(promtool: str, tmp_path: Path) -> None:
    suite = yaml.safe_load(TESTS.read_text())
    suite["rule_files"] = [str(write_rules(tmp_path / "rules.yaml", rules(annotations=False)))]
    tested = {case["alertname"] for test in suite["tests"] for case in test.get("alert_rule_test", [])}
    alerts = {r["alert"] for g in rules()["groups"] for r in g["rules"] if "alert" in r}
    assert tested == alerts, f"alerts without a promtool test: {sorted(alerts - tested)}"
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    result = _run(promtool, "test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_threshold_is_caught(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: with the behind-feed threshold ten times higher, its firing case does."""
    suite = yaml.safe_load(TESTS.read_text())
    loose = rules(annotations=False, replace={"behind_feed_seconds > 600": "behind_feed_seconds > 6000"})
    suite["rule_files"] = [str(write_rules(tmp_path / "rules.yaml", loose))]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    result = _run(promtool, "test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode != 0
    assert "alertname: MatchEnvironmentBehindFeed" in result.stdout + result.stderr


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(queries.values())]}]}
    result = _run(promtool, "check", "rules", str(write_rules(tmp_path / "dashboard.yaml", as_rules)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_ships_the_same_rules_and_dashboard_as_the_component() -> None:
    files = PROMETHEUS_RULE.parents[3] / "charts" / "matchenv" / "files"
    for source in (PROMETHEUS_RULE, DASHBOARD):
        assert (files / source.name).read_text() == source.read_text(), f"{source.name}: run `make monitoring`"

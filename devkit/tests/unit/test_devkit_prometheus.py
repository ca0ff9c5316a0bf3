"""The rules and dashboard queries the dev kit's Prometheus loads, read out of the monitoring component."""

from __future__ import annotations

from matchenv_devkit.services.prometheus import dashboard_queries, rules


def test_the_rules_are_the_components_and_a_test_may_shorten_them() -> None:
    shipped = rules()
    alerts = {r["alert"]: r for g in shipped["groups"] for r in g["rules"] if "alert" in r}
    assert alerts["MatchEnvironmentBehindFeed"]["for"] == "5m"
    assert "annotations" in alerts["MatchEnvironmentNotReady"]
    short = rules(annotations=False, replace={"> 600": "> 1"}, for_="4s")
    shortened = {r["alert"]: r for g in short["groups"] for r in g["rules"] if "alert" in r}
    assert shortened["MatchEnvironmentBehindFeed"]["expr"].strip().endswith("> 1")
    assert {r["for"] for r in shortened.values()} == {"4s"}
    assert all("annotations" not in r for r in shortened.values())
    records = [r for g in short["groups"] for r in g["rules"] if "record" in r]
    assert records
    assert all("for" not in r for r in records)


def test_every_dashboard_query_is_named_by_its_panel_and_reads_all_namespaces() -> None:
    queries = dashboard_queries()
    assert "Backlog (ready + unacknowledged)/A" in queries
    assert all("$" not in expr for expr in queries.values()), [e for e in queries.values() if "$" in e]
    assert 'namespace=~"team-a"' in dashboard_queries(namespace="team-a")["Backlog (ready + unacknowledged)/A"]

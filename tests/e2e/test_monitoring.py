"""A real Prometheus (Debian's package) scrapes a running pipeline as the monitoring component's PodMonitors would:
the operator (honor_labels), every worker pod's ``metrics`` port (labelled namespace and name, as the workers'
PodMonitor relabels), and RabbitMQ's Prometheus plugin; it loads the component's rules, with the alerts' ``for``
and the behind-feed threshold shortened to what a test can wait for. prod, dev and staging take the same feed;
dev is paused while more is scraped: the divergence series, the alerts and the gauges say so; resumed, they clear.
No log line of the whole run holds a password or token the run made.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import pika
import pytest
import yaml

from matchenv.naming import ENV_LABEL
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.processrunner import ProcessRunner
from matchenv_devkit.cluster.stack import LocalStack
from matchenv_devkit.services.browser import count, flower_workers
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.prometheus import PrometheusServer, dashboard_queries, rules
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.e2e.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ("prod", "dev", "staging")
MATCHES = 1000
MORE = 500
# what a test can wait for: every alert's `for` 4 s, "behind its feed" from 1 s, "growing" over one minute
SHORTENED = {"behind_feed_seconds > 600": "behind_feed_seconds > 1", "[10m:1m]": "[1m:2s]"}
# queries whose series only exist after a failure (a broker error during a converge): checked to parse only
FAILURE_ONLY = {"Broker errors during converges/A"}


@dataclass
class Watched:
    pipeline: Pipeline
    prometheus: PrometheusServer
    started: float
    outputs: list[str] = field(default_factory=list)  # what each scrape printed

    def scrape(self, *args: str) -> None:
        result = self.pipeline.scrape(*args)
        self.outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr

    def value(self, expr: str, **labels: str) -> float | None:
        """The value of the one series of ``expr`` carrying ``labels``, None when there is none."""
        found = [s for s in self.prometheus.query(expr) if all(s["metric"].get(k) == v for k, v in labels.items())]
        return float(found[0]["value"][1]) if len(found) == 1 else None

    def values(self, expr: str, by: str = "name") -> dict[str, float]:
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.prometheus.query(expr)}


def _until(fetch: Callable[[], Any], expected: Any, what: str, timeout: float = 60) -> None:
    """Until ``fetch()`` equals ``expected``; the timeout's error shows the last answer."""
    seen: list[Any] = [None]

    def check() -> bool:
        seen[0] = fetch()
        return bool(seen[0] == expected)

    try:
        wait_for(check, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: last {seen[0]!r}, expected {expected!r}") from None


def _worker_targets(runner: ProcessRunner) -> list[tuple[str, dict[str, str]]]:
    """What the workers' PodMonitor discovers: worker pods of matchenv, their ``metrics`` port, ``name`` from the
    environment label."""
    return [(f"127.0.0.1:{port}", {"namespace": pod.namespace, "pod": pod.name, "name": pod.labels[ENV_LABEL]})
            for port, pod in runner.ports("metrics")
            if pod.labels.get("app.kubernetes.io/component") == "worker"
            and pod.labels.get("app.kubernetes.io/managed-by") == "matchenv"]


@pytest.fixture(scope="module")
def watched(kubectl: Kubectl, rabbitmq: RabbitMQNode, postgres: PostgresServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    tmp = tmp_path_factory.mktemp("monitoring")
    pipeline = LocalStack(kubectl, rabbitmq, postgres, tmp).start()
    prometheus = PrometheusServer(tmp / "prometheus", {"operator": True, "workers": False, "rabbitmq": False},
                                  rules(replace=SHORTENED, for_="4s"), interval="1s")
    done = threading.Event()
    try:
        assert pipeline.operator is not None
        assert pipeline.agent is not None
        runner = cast(ProcessRunner, pipeline.agent.runner)
        prometheus.start()
        prometheus.set_targets("operator", [(f"127.0.0.1:{pipeline.operator.metrics_port}", {"pod": "operator-0"})])
        prometheus.set_targets("rabbitmq", [(f"127.0.0.1:{rabbitmq.prometheus_port}", {"pod": "rabbitmq-0"})])

        def discover() -> None:  # worker pods come and go: follow them as service discovery would
            while not done.wait(1.0):
                prometheus.set_targets("workers", _worker_targets(runner))

        follower = threading.Thread(target=discover, daemon=True)
        follower.start()
        yield Watched(pipeline, prometheus, time.time())
    finally:
        done.set()
        prometheus.stop()
        pipeline.stop()


def _publish_garbage(rabbitmq: RabbitMQNode) -> None:
    """One message no worker can store, into the feed: every environment dead-letters it."""
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        conn.channel().basic_publish("matches-fanout", "", b"{not json", pika.BasicProperties(delivery_mode=2))


def _queue_counts(watched: Watched, name: str) -> tuple[int | None, int | None]:
    """The broker's ready and unacknowledged counts of ``name``'s queue."""
    queue = watched.pipeline.broker.get_queue("/", f"matches.{name}")
    return queue.messages_ready, queue.messages_unacknowledged


def _gauge_matches_the_broker(watched: Watched, name: str) -> bool:
    ready = watched.value("matchenv_environment_messages_ready", name=name)
    unacked = watched.value("matchenv_environment_messages_unacknowledged", name=name)
    return (ready, unacked) == _queue_counts(watched, name)


def test_three_environments_of_one_feed_are_level_and_every_query_has_series(watched: Watched) -> None:
    pipeline = watched.pipeline
    # prod and dev as manifests/environments ship them; staging without its backfill (the session's archive holds
    # what earlier tests published: replayed, it would count twice here)
    _apply_prod_with_flower(pipeline, watched.prometheus.state_dir.parent / "with-flower")
    pipeline.apply("dev")
    pipeline.apply("staging", workers={"replicas": 1})
    pipeline.wait_ready(*ENVIRONMENTS)
    watched.scrape("--synthetic", str(MATCHES))
    _publish_garbage(pipeline.rabbitmq)
    pipeline.wait_rows({name: MATCHES for name in ENVIRONMENTS}, timeout=300)

    # worker pods come and go (the autoscaler): each one's last count, gone or not, adds up to what was stored
    count = "sum by (name) (last_over_time(matchenv_worker_end_to_end_seconds_count[10m]))"
    _until(lambda: watched.values(count), dict.fromkeys(ENVIRONMENTS, float(MATCHES)),
           "1,000 scrape-to-commit observations per environment")
    _until(lambda: watched.values("matchenv:environment_behind_feed_seconds"), dict.fromkeys(ENVIRONMENTS, 0.0),
           "every environment level with its feed")
    _until(lambda: watched.values("max by (name) (matchenv_environment_dead_letter_messages)"),
           dict.fromkeys(ENVIRONMENTS, 1.0), "the odd message in each dead-letter queue")
    for name in ENVIRONMENTS:
        # everything dealt with is acknowledged, the odd message too (dead-lettered after its batch's last match)
        _until(lambda n=name: _queue_counts(watched, n), (0, 0),  # type: ignore[misc]
               f"{name}'s queue empty, nothing left unacknowledged")
        wait_for(lambda n=name: _gauge_matches_the_broker(watched, n), timeout=30,  # type: ignore[misc]
                 what=f"{name}'s gauges equal to the broker's counts")
    wait_for(lambda: watched.prometheus.firing("MatchEnvironmentDeadLettersGrowing"), timeout=60,
             what="dead letters growing, firing")

    _flower_shows_prods_workers(watched, processed=MATCHES + 1)

    missing: dict[str, str] = {}
    for query, expr in {**dashboard_queries(), **_recording_rules()}.items():
        if query not in FAILURE_ONLY and not watched.prometheus.query(expr):
            missing[query] = expr
    assert missing == {}, f"queries without a series from the running pipeline: {missing}"


def test_paused_dev_falls_behind_by_what_was_scraped_pages_and_catches_up(watched: Watched) -> None:
    pipeline = watched.pipeline
    pipeline.kubectl.run("patch", "menv", "dev", "--type=merge", "-p", '{"spec":{"paused":true}}')
    wait_for(lambda: watched.value("max by (name) (matchenv_environment_consumers)", name="dev") == 0, timeout=60,
             what="dev without consumers")
    time.sleep(2)  # dev's newest stored stamp is older than anything scraped from now on
    paused_at = int(time.time())
    watched.scrape("--synthetic", str(MORE), "--start", str(MATCHES))
    pipeline.wait_rows({"prod": MATCHES + MORE, "staging": MATCHES + MORE}, timeout=300)
    assert pipeline.rows("dev") == MATCHES

    _until(lambda: watched.value("matchenv:environment_behind_feed_messages", name="dev"), float(MORE),
           f"dev behind by {MORE} messages")
    # `matchenv status` says the same from the environments' status alone (no worker runs for dev to ask its newest)
    _until(lambda: {e["name"]: (e["behind_messages"], e["phase"]) for e in _status(pipeline)},
           {"prod": (0, "Ready"), "dev": (MORE, "Paused"), "staging": (0, "Ready")}, "matchenv status: dev behind")
    # ... and since when: its oldest waiting message was published after the pause (what `matchenv status` counts
    # the time behind from when no worker of dev can say what it stored)
    oldest = wait_for(lambda: pipeline.kubectl.get_json("menv", "dev")["status"].get("oldestMessageTime"),
                      timeout=30, what="dev's status dating its oldest waiting message")
    assert paused_at <= dt.datetime.fromisoformat(oldest).timestamp() <= time.time(), oldest
    behind = watched.value("matchenv:environment_behind_feed_seconds", name="dev")
    assert behind is not None
    assert behind >= 2
    assert watched.value("matchenv:environment_behind_feed_seconds", name="prod") == 0
    wait_for(lambda: _gauge_matches_the_broker(watched, "dev"), timeout=30, what="dev's gauges equal the broker's")
    for alert in ("MatchEnvironmentBehindFeed", "MatchEnvironmentBacklogWithoutConsumers"):
        firing = wait_for(lambda a=alert: watched.prometheus.firing(a), timeout=90,  # type: ignore[misc]
                          what=f"{alert} firing")
        assert {labels["name"] for labels in firing} == {"dev"}, firing
    assert not watched.prometheus.firing("MatchEnvironmentNotReady")  # paused on purpose: no page

    pipeline.kubectl.run("patch", "menv", "dev", "--type=merge", "-p", '{"spec":{"paused":false}}')
    pipeline.wait_rows({"dev": MATCHES + MORE}, timeout=300)
    _until(lambda: watched.values("matchenv:environment_behind_feed_seconds"), dict.fromkeys(ENVIRONMENTS, 0.0),
           "dev level again")
    _until(lambda: watched.value("matchenv:environment_behind_feed_messages", name="dev"), 0.0,
           "dev's backlog drained (the operator's gauge follows at its next converge)")
    wait_for(lambda: not watched.prometheus.firing("MatchEnvironmentBehindFeed"), timeout=60,
             what="behind its feed, resolved")
    for name in ENVIRONMENTS:
        assert pipeline.duplicates(name) == 0
    _draw(watched, Path(os.environ.get("MATCHENV_DOCS_PICTURE", "")) if os.environ.get("MATCHENV_DOCS_PICTURE")
          else None)


def _apply_prod_with_flower(pipeline: Pipeline, into: Path) -> None:
    """prod as manifests/environments ships it, with manifests/components/flower: its task events on, and Flower's
    Deployment reading them with the Secret the operator writes."""
    pipeline.database("prod")
    into.mkdir()
    shutil.copy(ROOT / "manifests/environments/prod/matchenvironment.yaml", into)
    shutil.copytree(ROOT / "manifests/components/flower", into / "flower")
    (into / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["matchenvironment.yaml"], "components": ["flower"]}))
    pipeline.kubectl.run("apply", "-k", str(into))


def _flower_shows_prods_workers(watched: Watched, processed: int) -> None:
    """Flower's workers page in headless Chromium (Debian's): prod's workers online, with everything they took."""
    runner = cast(ProcessRunner, watched.pipeline.agent.runner)  # type: ignore[union-attr]
    [port] = [p for p, pod in runner.ports("http") if pod.labels.get("matchenv.io/flower") == "prod"]
    url = f"http://127.0.0.1:{port}/workers"

    def page() -> tuple[str, ...] | None:
        cells = flower_workers(url)
        prod = [c for c in cells if c[0].startswith("matchenv-prod@")]
        return prod[0] if prod and prod[0][1] == "Online" and count(prod[0][3]) >= processed else None

    row = wait_for(page, timeout=90, what=f"Flower listing prod's workers online, {processed} processed")
    assert count(row[4]) == 1, row  # failed: the odd message, dead-lettered


def _status(pipeline: Pipeline) -> list[dict[str, Any]]:
    """``matchenv status -o json`` as a user runs it with the cluster's kubeconfig."""
    env = {**os.environ, "KUBECONFIG": str(pipeline.kubectl.cluster.kubeconfig)}
    result = subprocess.run([sys.executable, "-m", "matchenv.cli", "status", "-o", "json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def _recording_rules() -> dict[str, str]:
    return {f"rule/{r['record']}": r["record"] for g in rules()["groups"] for r in g["rules"] if "record" in r}


def _draw(watched: Watched, copy_to: Path | None) -> None:
    """The dashboard's main panels drawn from the real query results of this run (MATCHENV_DOCS_PICTURE=<path>
    keeps a copy, e.g. docs/monitoring.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time()
    panels: list[tuple[str, str, str]] = [
        ("Backlog (messages)", "matchenv:environment_backlog_messages", "messages"),
        ("Behind the newest of its feed", "matchenv:environment_behind_feed_seconds", "seconds"),
        ("Stored per second", "sum by (name) (rate(matchenv_worker_matches_total[15s]))", "matches/s"),
        ("Dead letters", "max by (name) (matchenv_environment_dead_letter_messages)", "messages"),
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.4 * len(panels)), sharex=True)
    for ax, (title, expr, unit) in zip(axes, panels, strict=True):
        series: list[dict[str, Any]] = watched.prometheus.query_range(expr, watched.started, end, 1.0)
        for s in sorted(series, key=lambda s: str(s["metric"].get("name"))):
            xs = [float(t) - watched.started for t, _ in s["values"]]
            ax.plot(xs, [float(v) for _, v in s["values"]], label=s["metric"].get("name", ""))
        ax.set_title(f"{title}: {expr}", fontsize=8, loc="left")
        ax.set_ylabel(unit, fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("seconds into the run (dev paused while 500 more were scraped, then resumed)", fontsize=8)
    figure.tight_layout()
    out = watched.prometheus.state_dir / "monitoring.png"
    figure.savefig(out, dpi=90)
    plt.close(figure)
    if copy_to is not None:
        shutil.copyfile(out, copy_to)


SECRET_KEY_WORDS = ("password", "token", "key", "secret")


def _secret_values(kubectl: Kubectl, operator_kubeconfig: Path) -> dict[str, str]:
    """Every password, token and key the run made, by where it lives: the Secrets' values under such keys, the
    passwords inside their URLs, and the operator's ServiceAccount token."""
    found: dict[str, str] = {}
    for secret in kubectl.get_json("secrets", "-A")["items"]:
        where = f"{secret['metadata']['namespace']}/{secret['metadata']['name']}"
        for key, encoded in (secret.get("data") or {}).items():
            value = base64.b64decode(encoded).decode(errors="replace")
            if any(word in key.lower() for word in SECRET_KEY_WORDS) and len(value) >= 8:
                found[f"{where}[{key}]"] = value
            password = urlsplit(value).password if "://" in value else None
            if password:
                found[f"{where}[{key}] password"] = unquote(password)
    for user in yaml.safe_load(operator_kubeconfig.read_text())["users"]:
        found[f"token of {user['name']}"] = user["user"]["token"]
    return found


def test_no_log_line_of_the_run_holds_a_secret(watched: Watched) -> None:
    pipeline = watched.pipeline
    secrets = _secret_values(pipeline.kubectl, pipeline.tmp / "operator.kubeconfig")
    assert any("-broker[password]" in where for where in secrets), sorted(secrets)  # the workers' users
    assert any("matchenv-publisher[password]" in where for where in secrets), sorted(secrets)
    logs = [*pipeline.tmp.glob("*.log"), *(pipeline.tmp / "pods").glob("*.log")]
    assert any(log.name.startswith("default_prod-workers-") for log in logs), logs
    texts = {log.name: log.read_text(errors="replace") for log in logs}
    texts.update({f"scrape {i}": output for i, output in enumerate(watched.outputs)})
    assert len(watched.outputs) == 2
    leaks = [(name, where) for name, text in texts.items() for where, value in secrets.items() if value in text]
    assert leaks == []

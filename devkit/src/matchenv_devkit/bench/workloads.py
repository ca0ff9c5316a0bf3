"""Environments with workers (pods of the process node storing into PostgreSQL): apply → Ready beside the same
Deployment applied without the operator, publish → row latency at a steady rate across three environments, and the
autoscaler's reaction to a backlog and to its end."""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import psycopg
from kubernetes import client, config

from matchenv.naming import archive_name
from matchenv.topology.client import BrokerNotFound
from matchenv.workers.migrate import migrate
from matchenv_devkit.bench.operator import GROUP, PLURAL, SHIPPED_RESYNC, VERSION, OperatorBench, percentile
from matchenv_devkit.bench.result import Measure, Series
from matchenv_devkit.bench.result import Target as Goal
from matchenv_devkit.cluster.nodeagent import NodeAgent, wait_for_node_ready
from matchenv_devkit.cluster.processrunner import ProcessRunner
from matchenv_devkit.cluster.stack import count_rows
from matchenv_devkit.services.process import wait_for

NAMESPACE = "default"
TEMPLATE = "ready-template"  # the environment whose Deployment the bare runs copy
ARCHIVE = archive_name("matches-fanout")


class WorkloadBench:
    """Runs beside an :class:`OperatorBench` (its operator, broker and control plane) with a process node."""

    def __init__(self, ops: OperatorBench, log: Callable[[str], None]) -> None:
        self.ops = ops
        self.stack = ops.stack
        self.log = log
        api = config.new_client_from_config(str(self.stack.kubectl.cluster.kubeconfig))
        self.apps = client.AppsV1Api(api)
        self.agent = NodeAgent(api, runner=ProcessRunner(api, self.stack.tmp / "pods")).start()
        wait_for_node_ready(client.CoreV1Api(api), self.agent.name)

    def stop(self) -> None:
        self.agent.stop()

    # -- helpers ---------------------------------------------------------------------------------------------
    def database(self, name: str) -> str:
        """A fresh, migrated database and Secret ``matchenv-db-<name>`` pointing at it; returns its URL."""
        url = self.stack.postgres.create_database(f"bench_{name}_{uuid.uuid4().hex[:6]}")
        migrate(url)
        self.stack.kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": f"matchenv-db-{name}", "namespace": NAMESPACE},
                                  "stringData": {"DATABASE_URL": url}})
        return url

    def create(self, name: str, database: str, replicas: int, autoscaling: dict[str, Any] | None = None) -> None:
        spec: dict[str, Any] = {"queue": {"name": f"matches.{name}"},
                                "workers": {"image": "matchenv:0.1.0", "replicas": replicas,
                                            "databaseSecretRef": {"name": f"matchenv-db-{database}"}}}
        if autoscaling:
            spec["autoscaling"] = autoscaling
        self.ops.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "MatchEnvironment", "metadata": {"name": name}, "spec": spec})

    def environment(self, name: str) -> dict[str, Any]:
        obj: Any = self.ops.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        return cast(dict[str, Any], obj)

    def is_ready(self, name: str) -> bool:
        conditions = (self.environment(name).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def delete(self, *names: str) -> None:
        self.stack.kubectl.run("delete", "menv", *names, "--timeout=120s", timeout=150)

    def scrape(self, *args: str) -> None:
        result = self.stack.scrape(*args)
        if result.returncode != 0:
            raise RuntimeError(f"scrape {' '.join(args)} failed: {result.stderr[-2000:]}")

    # -- measures --------------------------------------------------------------------------------------------
    def ready(self, trials: int = 12) -> Measure:
        """apply → Ready with 2 workers, beside the same Deployment (copied from the operator's, without an owner
        and with its own labels) applied without the operator; interleaved, each started at a random phase."""
        self.ops.start_operator(SHIPPED_RESYNC)
        self.database("ready")
        self.create(TEMPLATE, "ready", 2)
        wait_for(lambda: self.is_ready(TEMPLATE), timeout=120, what="the template environment Ready")
        template = self.stack.kubectl.get_json("deployment", f"{TEMPLATE}-workers")
        self.delete(TEMPLATE)
        ours: list[float] = []
        bare: list[float] = []
        for i in range(trials):
            # alternating which goes first: a machine that slows down during the run weighs on both alike
            for which in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                time.sleep(random.uniform(0, SHIPPED_RESYNC / 2))
                if which == "ours":
                    ours.append(self._time_ours(i))
                else:
                    bare.append(self._time_bare(i, template))
            self.apps.delete_namespaced_deployment(f"bare{i}", NAMESPACE)
            self.delete(f"ready{i}", f"host{i}")
        ratio = statistics.median(ours) / statistics.median(bare)
        return Measure(
            name=f"apply -> Ready with 2 workers ({trials} times, random phase against the {SHIPPED_RESYNC:.0f} s "
                 "resync)",
            ours=f"p50 {statistics.median(ours):.2f} s, p95 {percentile(ours, 0.95):.2f} s",
            baseline=f"the same Deployment applied without the operator: p50 {statistics.median(bare):.2f} s, "
                     f"p95 {percentile(bare, 0.95):.2f} s",
            ratio=f"{ratio:.2f}",
            targets=[Goal("apply -> Ready with workers <= 1.1 x the bare Deployment (p50)", ratio, 1.1,
                          at_least=False)])

    def latency(self, rate: int = 1000, seconds: int = 10, environments: int = 3,
                rounds: int = 2) -> tuple[Measure, Series]:
        """``rate`` matches/s for ``seconds`` to ``environments`` environments with one worker each: per row, the
        time from the publisher building the message (its ``x-matchenv-scraped-at``) to the transaction that
        stored it (``created_at``, the transaction's start: up to one batch's SQL earlier than its commit). Beside
        the same run without the feed's archive (the stream every publish is also written to): ``rounds`` runs of
        each, alternated, ``seconds`` split between them (one run of each, the bare one first, gave 1.1x, 1.3x and
        2.3x in three records)."""
        runs: dict[str, list[float]] = {"off": [], "always": []}
        for r in range(rounds):
            for archive in ("off", "always") if r % 2 == 0 else ("always", "off"):
                prefix = f"{'plain' if archive == 'off' else 'latency'}{r}x"
                done = self._latency_run(prefix, rate, seconds // rounds, environments, archive=archive)
                runs[archive] += [v for vs in done.values() for v in vs]
        everything, baseline = runs["always"], runs["off"]
        p95, bare_p95 = percentile(everything, 0.95), percentile(baseline, 0.95)
        total = rate * seconds
        measure = Measure(
            name=f"publish -> row, {total:,} matches at {rate:,}/s to {environments} environments (one worker each)",
            ours=f"with the archive: p50 {statistics.median(everything) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
                 f"max {max(everything) * 1000:.0f} ms",
            baseline=f"the same without the archive (MATCHENV_ARCHIVE=off): p50 "
                     f"{statistics.median(baseline) * 1000:.0f} ms, p95 {bare_p95 * 1000:.0f} ms, max "
                     f"{max(baseline) * 1000:.0f} ms",
            ratio=f"{p95 / bare_p95:.1f} (p95)",
            notes=[f"{rounds} runs of each, {total // rounds:,} matches each, alternated (the first run without)"],
            targets=[Goal(f"publish -> row p95 <= 0.25 s at {rate:,}/s x {environments} environments", p95, 0.25,
                          at_least=False),
                     Goal("publish -> row p95 with the archive <= 2 x without", p95 / bare_p95, 2.0,
                          at_least=False)])
        series = Series("Publish -> row latency", "seconds", "fraction of rows",
                        {"with the archive": [(0.0, v) for v in everything],
                         "without (MATCHENV_ARCHIVE=off)": [(0.0, v) for v in baseline]}, cdf=True)
        return measure, series

    def _latency_run(self, prefix: str, rate: int, seconds: int, environments: int,
                     archive: str) -> dict[str, list[float]]:
        self.ops.start_operator(SHIPPED_RESYNC, archive=archive)
        if archive == "off":  # an archive made by the measures before would still take every publish
            with contextlib.suppress(BrokerNotFound):
                self.stack.broker.delete_queue("/", ARCHIVE)
            with contextlib.suppress(BrokerNotFound):
                self.stack.broker.delete_policy("/", f"matchenv.{ARCHIVE}")
        names = [f"{prefix}{i}" for i in range(environments)]
        urls = {name: self.database(name) for name in names}
        for name in names:
            self.create(name, name, 1)
        wait_for(lambda: all(self.is_ready(n) for n in names), timeout=180, what=f"{prefix} environments Ready")
        total = rate * seconds
        self.scrape("--synthetic", str(total), "--max-rate", str(rate), "--seed", "4242")

        def stored() -> bool:
            return all(count_rows(url) >= total for url in urls.values())

        wait_for(stored, timeout=300, what="every published match stored", every=0.5)
        samples: dict[str, list[float]] = {}
        for name, url in urls.items():
            with psycopg.connect(url) as conn:
                rows = conn.execute("select extract(epoch from created_at - scraped_at) from matches").fetchall()
            samples[name] = [float(r[0]) for r in rows]
        self.delete(*names)
        return samples

    def autoscaler(self, environments: int = 5, backlog: int = 1000) -> Measure:
        """Each of ``environments`` autoscaled environments (1..5 workers, 100 messages per worker, the default
        60 s stabilization) gets ``backlog`` messages at a random moment while its database is slow (a lock held on
        its ``matches`` table): seconds until the scale-up to 5 is written; then the database is fast again: seconds
        from the last row stored until minReplicas is written. The broker's statistics interval is its default (5 s);
        the operator's backlog probe reads the ready count over AMQP every second."""
        self.ops.start_operator(SHIPPED_RESYNC)
        url = self.database("autoscaled")
        scaling = {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "messagesPerReplica": 100}
        names = [f"auto{i}" for i in range(environments)]
        for name in names:
            self.create(name, "autoscaled", 1, scaling)
        wait_for(lambda: all(self.is_ready(n) for n in names), timeout=180, what="autoscaled environments Ready")
        up: list[float] = []
        down: list[float] = []
        with psycopg.connect(url, autocommit=False) as lock:
            lock.execute("lock table matches in share row exclusive mode")
            for i, name in enumerate(names):
                time.sleep(random.uniform(0, SHIPPED_RESYNC))
                self.scrape("--synthetic", str(backlog), "--start", str(i * backlog), "--queue", f"matches.{name}")
                published = time.monotonic()
                wait_for(partial(self._replicas_are, name, 5), timeout=60, what=f"{name} scaled up", every=0.05)
                up.append(time.monotonic() - published)
            lock.rollback()
        wait_for(lambda: count_rows(url) >= environments * backlog, timeout=120, what="the backlogs stored", every=0.1)
        drained = time.monotonic()
        for name in names:
            wait_for(partial(self._replicas_are, name, 1), timeout=180, what=f"{name} back to 1", every=0.1)
            down.append(time.monotonic() - drained)
        self.delete(*names)
        return Measure(
            name=f"autoscaler: a backlog of {backlog:,} -> scale-up written; drained -> minReplicas written "
                 f"({environments} environments, resync {SHIPPED_RESYNC:.0f} s, broker statistics every 5 s)",
            ours=f"up: p50 {statistics.median(up):.1f} s, p95 {percentile(up, 0.95):.1f} s, max {max(up):.1f} s; "
                 f"down: p50 "
                 f"{statistics.median(down):.1f} s, max {max(down):.1f} s (scaleDownStabilizationSeconds 60)",
            baseline="KEDA's RabbitMQ scaler with its defaults: polls every 30 s; removes the last replica after "
                     "cooldownPeriod 300 s (fewer replicas: the HPA's 300 s scale-down window)",
            targets=[Goal("backlog -> scale-up written p95 <= 2 s", percentile(up, 0.95), 2.0, at_least=False)])

    def _time_ours(self, i: int) -> float:
        started = time.monotonic()
        self.create(f"ready{i}", "ready", 2)
        wait_for(partial(self.is_ready, f"ready{i}"), timeout=120, what=f"ready{i} Ready", every=0.05)
        return time.monotonic() - started

    def _time_bare(self, i: int, template: dict[str, Any]) -> float:
        """The template's Deployment, its pods working for environment ``host<i>`` (made first with no workers of
        its own: its queue, broker user and Secret exist, as they would for a Deployment made by hand)."""
        self.create(f"host{i}", "ready", 0)
        wait_for(partial(self.is_ready, f"host{i}"), timeout=60, what=f"host{i} Ready")
        started = time.monotonic()
        self.apps.create_namespaced_deployment(NAMESPACE, cast(Any, _bare_copy(template, f"bare{i}", f"host{i}")))
        wait_for(partial(self._deployment_ready, f"bare{i}", 2), timeout=120, what=f"bare{i} ready", every=0.05)
        return time.monotonic() - started

    def _replicas_are(self, name: str, replicas: int) -> bool:
        return int(self.environment(name)["spec"]["workers"]["replicas"]) == replicas

    def _deployment_ready(self, name: str, replicas: int) -> bool:
        status = self.apps.read_namespaced_deployment_status(name, NAMESPACE).status
        return status is not None and (status.ready_replicas or 0) >= replicas


def _bare_copy(deployment: dict[str, Any], name: str, environment: str) -> dict[str, Any]:
    """The template environment's Deployment as a fresh one named ``name`` with no owner, whose pods work for
    ``environment`` (its queue and Secrets), labelled apart so that neither Deployment adopts the other's pods."""
    spec = json.loads(json.dumps(deployment["spec"]).replace(TEMPLATE, environment))
    labels = {"app": name}
    spec["selector"] = {"matchLabels": labels}
    spec["template"]["metadata"]["labels"] = labels
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec}

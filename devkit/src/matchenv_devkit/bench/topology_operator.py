"""The RabbitMQ messaging-topology-operator, built here from its Go module, on the bench's API server and broker: the
work matchenv's operator does for an environment, done with its objects (a Queue, a Binding from the fanout, a
User and its Permission), timed the same way.

It is started as its docs say for a broker it did not make: webhooks off, its objects naming a connection Secret
labelled ``rabbitmq.com/topology-operator`` (the management URL and the admin user); its CRDs and the cluster
operator's RabbitmqCluster CRD installed. It runs with the admin kubeconfig (matchenv's operator with its
ServiceAccount's) and with ``SYNC_PERIOD`` at matchenv's shipped resync, so both re-read everything as often (its
own default is 10 h).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client, config

from matchenv.topology.client import ManagementClient
from matchenv_devkit.bench.burst import LATE_AFTER, Burst, start_burst
from matchenv_devkit.bench.operator import PAUSE, cpu_seconds, fanout_bindings, percentile, rss_mib
from matchenv_devkit.bench.readiness import FirstReady
from matchenv_devkit.bench.result import BurstRun, Measure, OperatorRun, Series
from matchenv_devkit.bench.result import Target as Goal
from matchenv_devkit.cluster.build import ensure_topology_operator
from matchenv_devkit.cluster.stack import LocalStack
from matchenv_devkit.cluster.versions import TOPOLOGY_OPERATOR_VERSION
from matchenv_devkit.services.process import ChildProcess, free_port

GROUP, VERSION = "rabbitmq.com", "v1beta1"
KINDS = (("Queue", "queues"), ("Binding", "bindings"), ("User", "users"), ("Permission", "permissions"))
NAMESPACE = "topology-operator-bench"
CONNECTION = "bench-broker"


class TopologyOperatorProcess(ChildProcess):
    """The operator's binary as a child process, its log in ``log_path``."""

    def __init__(self, binary: Path, kubeconfig: Path, log_path: Path, sync_period: float) -> None:
        super().__init__(log_path)
        self.binary, self.kubeconfig, self.sync_period = binary, kubeconfig, sync_period

    def start(self) -> TopologyOperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "ENABLE_WEBHOOKS": "false",
               "OPERATOR_NAMESPACE": NAMESPACE, "SYNC_PERIOD": f"{self.sync_period:g}s"}
        self.spawn([str(self.binary), "--metrics-bind-address=0",
                    f"--health-probe-bind-address=127.0.0.1:{free_port()}"], env)
        return self


def ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class TopologyOperatorBench:
    """One environment's topology as the topology operator's four objects, in a namespace of their own."""

    def __init__(self, stack: LocalStack, log: Callable[[str], None], sync_period: float) -> None:
        self.stack, self.log = stack, log
        self.binaries = ensure_topology_operator(progress=log)
        kubectl = stack.kubectl
        kubectl.run("apply", "--server-side", "-f", str(self.binaries.crd_dir), timeout=120)
        for _, plural in KINDS:
            kubectl.wait_established(f"crd/{plural}.{GROUP}")
        kubectl.run("create", "namespace", NAMESPACE, check=False)
        ep = stack.rabbitmq.endpoints
        kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": CONNECTION, "namespace": NAMESPACE,
                                    "labels": {"rabbitmq.com/topology-operator": "true"}},
                       "stringData": {"username": ep.username, "password": ep.password,
                                      "uri": ep.management_url}})
        api = config.new_client_from_config(str(kubectl.cluster.kubeconfig))
        self.custom = client.CustomObjectsApi(api)
        self.broker: ManagementClient = stack.broker
        self.process = TopologyOperatorProcess(self.binaries.path("topology-operator"), kubectl.cluster.kubeconfig,
                                               stack.tmp / "topology-operator.log", sync_period).start()

    def stop(self) -> None:
        """Its objects deleted while it runs (each has its finalizer), then the process."""
        for _, plural in KINDS:
            self.stack.kubectl.run("delete", f"{plural}.{GROUP}", "--all", "-n", NAMESPACE, "--wait=false",
                                   check=False, timeout=120)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(self._list(plural) for _, plural in KINDS):
            time.sleep(1.0)
        self.process.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def objects(self, name: str) -> list[dict[str, Any]]:
        """Queue ``topology.<name>``, its binding from ``matches-fanout``, a user and its permission on that queue."""
        ref = {"rabbitmqClusterReference": {"connectionSecret": {"name": CONNECTION}}}
        queue = f"topology.{name}"
        escaped = queue.replace(".", r"\.")
        specs: dict[str, dict[str, Any]] = {
            "Queue": {"name": queue, "vhost": "/", "durable": True},
            "Binding": {"vhost": "/", "source": "matches-fanout", "destination": queue, "destinationType": "queue"},
            "User": {"tags": []},
            "Permission": {"vhost": "/", "userReference": {"name": name},
                           "permissions": {"configure": f"^{escaped}$", "write": "^$", "read": f"^{escaped}$"}},
        }
        return [{"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE},
                 "spec": {**specs[kind], **ref}} for kind, _ in KINDS]

    def create(self, name: str) -> None:
        for obj, (_, plural) in zip(self.objects(name), KINDS, strict=True):
            self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, obj)

    def _list(self, plural: str) -> list[dict[str, Any]]:
        listed: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)
        items: list[dict[str, Any]] = listed["items"]
        return items

    def all_ready(self, name: str) -> bool:
        for _, plural in KINDS:
            obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)
            if not ready(obj):
                return False
        return True

    @contextmanager
    def one_at_a_time(self) -> Iterator[Callable[[str], float]]:
        """A function that applies one environment's four objects and answers the seconds from the first create to
        all four Ready."""
        seen = self._watches()

        def timed(name: str) -> float:
            started = time.monotonic()
            self.create(name)
            return max(kind.at(name) for kind in seen) - started

        try:
            yield timed
        finally:
            for kind in seen:
                kind.stop()

    def _watches(self, timeout: float = 1800) -> list[FirstReady]:
        """A watch per kind: when each of its objects was first Ready."""
        return [FirstReady(self.custom, GROUP, VERSION, NAMESPACE, plural, ready, timeout) for _, plural in KINDS]

    def burst(self, total: int, timeout: float = 900) -> tuple[list[tuple[float, float]], Burst]:
        """``total`` environments created one after another, and one more 2 s in: how many had all four objects
        Ready at each second since the first create (the last point: all of them), and the late one's own apply ->
        Ready. A watch per kind (never a list each second: that would load the API server)."""
        seen = self._watches(timeout)
        applies = start_burst(self.create, total, self.all_ready, timeout=timeout)
        progress: list[tuple[float, float]] = [(0.0, 0.0)]
        complete = 0
        while complete < total and time.monotonic() - applies.started < timeout:
            time.sleep(0.2)
            complete = sum(1 for name in set.intersection(*(kind.names() for kind in seen)) if name.startswith("env"))
            if time.monotonic() - applies.started - progress[-1][0] >= 1.0 or complete >= total:
                progress.append((time.monotonic() - applies.started, float(complete)))
        for kind in seen:
            kind.stop()
        if complete < total:
            raise RuntimeError(f"only {complete} of {total} of the topology operator's environments Ready")
        applies.join(timeout)
        return progress, applies

    def drift(self, trials: int, timeout: float) -> list[float | None]:
        """A binding of its environment deleted on the broker: seconds until it is back (None: not within
        ``timeout``)."""
        name = "drift"
        self.create(name)
        deadline = time.monotonic() + 60
        while not self.all_ready(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        samples: list[float | None] = []
        queue = f"topology.{name}"
        for _ in range(trials):
            binding = fanout_bindings(self.broker, queue)[0]
            started = time.monotonic()
            self.broker.unbind_queue("/", "matches-fanout", queue, binding.properties_key)
            back = None
            while time.monotonic() - started < timeout:
                if fanout_bindings(self.broker, queue):
                    back = time.monotonic() - started
                    break
                time.sleep(0.05)
            samples.append(back)
            if back is None:
                break  # it will not come back sooner the next time
        return samples

    def run(self, latency: list[float], drift_trials: int, drift_timeout: float, total: int) -> OperatorRun:
        """What matchenv's operator bench measures, in the same order after one at a time (``latency``, timed
        beside matchenv's: :meth:`one_at_a_time`): drift, then ``total`` at once (its CPU seconds until all are
        Ready, and its RSS then)."""
        drift = self.drift(drift_trials, drift_timeout)
        cpu = cpu_seconds(self.pid)
        progress, applies = self.burst(total)
        return OperatorRun(latency, drift, BurstRun(progress, cpu_seconds(self.pid) - cpu, rss_mib(self.pid),
                                                    late_seconds=applies.late_seconds, applied=applies.applied))


def _p(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples):.2f} s, p95 {percentile(samples, 0.95):.2f} s"


def _late(run: BurstRun) -> str:
    if run.late_seconds is None:
        return "no late environment timed"
    elsewhere = "" if run.elsewhere_seconds is None else \
        f" (in another namespace {run.elsewhere_seconds:.1f} s)"
    return f"one applied {LATE_AFTER:g} s in ready {run.late_seconds:.1f} s after its apply{elsewhere}"


def compare(ours: OperatorRun, theirs: OperatorRun, sync_period: float) -> tuple[list[Measure], Series]:
    """matchenv's operator beside the topology operator on the same work: one environment's apply -> ready, many at
    once (time, CPU, memory), a deleted binding back."""
    what = ("matchenv: TopologyReady of a MatchEnvironment (queue, dead-letter queue and exchange, two bindings, user, "
            "permission); the topology operator: Ready of its Queue, Binding, User and Permission")
    p50, base = statistics.median(ours.latency), statistics.median(theirs.latency)
    latency = Measure(
        name=f"beside the topology operator: apply -> ready, one environment at a time ({len(theirs.latency)} each)",
        ours=_p(ours.latency), baseline=f"topology operator {TOPOLOGY_OPERATOR_VERSION}: {_p(theirs.latency)}",
        ratio=f"{base / p50:.1f}x faster (p50)",
        notes=[what, "both operators running, one environment of each in turn (which goes first alternating), "
                     f"{PAUSE:g} s apart"],
        targets=[Goal("matchenv ahead (p50)", base / p50, 1.0)])
    a, b = ours.burst, theirs.burst
    total = int(a.progress[-1][1])
    burst = Measure(
        name=f"beside the topology operator: {total} environments applied at once",
        ours=f"all ready in {a.seconds:.1f} s, {a.cpu_seconds:.1f} CPU s, RSS {a.rss_mib:.0f} MiB; {_late(a)}",
        baseline=f"all ready in {b.seconds:.1f} s, {b.cpu_seconds:.1f} CPU s, RSS {b.rss_mib:.0f} MiB; {_late(b)}",
        ratio=f"time {b.seconds / a.seconds:.1f}x faster, CPU {a.cpu_seconds / b.cpu_seconds:.2f}x, "
              f"RSS {a.rss_mib / b.rss_mib:.2f}x theirs",
        notes=[what, f"both re-read everything every {sync_period:g} s (matchenv's shipped resync; the topology "
                     "operator's SYNC_PERIOD, 10 h by default)"],
        targets=[Goal("matchenv ahead (all ready)", b.seconds / a.seconds, 1.0),
                 Goal("matchenv's CPU <= the topology operator's", a.cpu_seconds / b.cpu_seconds, 1.0, at_least=False),
                 Goal("matchenv's RSS <= the topology operator's", a.rss_mib / b.rss_mib, 1.0, at_least=False)])
    ours_drift = [d for d in ours.drift if d is not None]
    back = [d for d in theirs.drift if d is not None]
    missed = len(theirs.drift) - len(back)
    drift = Measure(
        name="beside the topology operator: a binding deleted on the broker -> back",
        ours=_p(ours_drift) + " (broker events)",
        baseline=(_p(back) if back else "never") + (f", {missed} not back within the wait" if missed else "")
        + f" (SYNC_PERIOD {sync_period:g} s; by default 10 h)",
        ratio=f"{statistics.median(back) / statistics.median(ours_drift):.0f}x faster (p50)" if back else "—",
        targets=[Goal("matchenv ahead (p50)", (statistics.median(back) if back else float("inf"))
                      / statistics.median(ours_drift), 1.0)])
    series = Series(f"{total} environments applied at once", "seconds since the first apply", "environments ready",
                    {"matchenv operator": a.progress,
                     f"topology operator {TOPOLOGY_OPERATOR_VERSION}": b.progress})
    return [latency, burst, drift], series

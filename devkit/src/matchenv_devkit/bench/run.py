"""``matchenv-dev bench``: every measure in one run, then docs/benchmarks.md and its plot."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from matchenv_devkit.bench import backfill, operator, publisher, topology_operator, worker, workloads
from matchenv_devkit.bench.report import plot, render
from matchenv_devkit.bench.result import Measure, Series
from matchenv_devkit.cluster.stack import LocalStack


def run_bench(state_dir: Path, docs: Path, log: Callable[[str], None], environments: int = 500,
              large: int = 2000) -> list[Measure]:
    """Every measure; ``environments`` in the burst beside the topology operator, then ``large`` on matchenv alone
    (0: not)."""
    started = time.monotonic()
    shutil.rmtree(state_dir, ignore_errors=True)
    # RabbitMQ's default statistics interval (5 s), as users run it (the tests use 0.5 s for quick counts)
    stack, shutdown = LocalStack.create(state_dir, log, node="process", resync_seconds=operator.SHIPPED_RESYNC,
                                        stats_interval_ms=5000, delete_on_stop=False)
    measures: list[Measure] = []
    series: list[Series] = []
    rabbit = stack.broker.server_version() or "-"

    def done(measure: Measure) -> None:
        measures.append(measure)
        log(f"{measure.name}: {measure.ours} | {measure.baseline} | {measure.ratio}")
        for target in measure.targets:
            log(f"  {'met' if target.met else 'MISSED'}: {target.text} (measured {target.value:.3g})")

    def plotted(result: tuple[Measure, Series]) -> None:
        done(result[0])
        series.append(result[1])

    try:
        log("publisher ...")
        done(publisher.measure(stack.rabbitmq))
        log("worker ...")
        done(worker.measure(stack.rabbitmq, stack.postgres, state_dir))
        done(worker.stop_seconds(stack.rabbitmq, stack.postgres, state_dir))
        log("backfill ...")
        done(backfill.measure(stack.rabbitmq, log=log))
        bench = operator.OperatorBench(stack, log)
        try:
            # the RabbitMQ messaging-topology-operator on the same API server and broker: one environment at a time
            # in turn with matchenv's, then its drift and burst with matchenv's operator stopped; then cleaned away
            log("topology operator: the same work ...")
            anchor = topology_operator.TopologyOperatorBench(stack, log, operator.SHIPPED_RESYNC)
            try:
                stack.broker.declare_exchange("/", "matches-fanout", "fanout")  # as matchenv's first environment would
                log("operator: apply -> TopologyReady, in turn with the topology operator's ...")
                with anchor.one_at_a_time() as theirs_one:
                    done(bench.latency(beside=lambda name: theirs_one(f"one-{name}")))
                bench.stop_operator()
                theirs = anchor.run(bench.beside_samples, drift_trials=8, drift_timeout=3 * operator.SHIPPED_RESYNC,
                                    total=environments)
            finally:
                anchor.stop()
            log("operator: drift ...")
            plotted(bench.drift())
            # their queues would take a copy of every match the workload measures publish, unconsumed
            stack.kubectl.run("delete", "menv", "--all", "--timeout=120s", timeout=150)
            loads = workloads.WorkloadBench(bench, log)
            try:
                log("workers: apply -> Ready beside a bare Deployment ...")
                done(loads.ready())
                log("workers: publish -> row ...")
                plotted(loads.latency())
                log("workers: autoscaler ...")
                done(loads.autoscaler())
            finally:
                loads.stop()
            log(f"operator: {environments} environments ...")
            alone = bench.scale(environments)[0]  # its curve is plotted beside the topology operator's
            done(alone)
            beside, burst = topology_operator.compare(bench.record(), theirs, operator.SHIPPED_RESYNC)
            if beside[1].missed("CPU"):
                log("operator: the CPU of a burst, profiled ...")
                beside[1].profile = bench.cpu_profile()
                beside[1].notes.append("CPU: see the profile (a second burst with py-spy attached)")
            if beside[1].missed("RSS"):
                if alone.missed("RSS"):  # missed there too: profiled there
                    beside[1].notes.append(f"RSS: see the memory profile of \"{alone.name}\"")
                else:
                    log("operator: the memory of the burst's environments, profiled ...")
                    beside[1].profile += ("\n\n" if beside[1].profile else "") + bench.memory_profile(environments)
                    beside[1].notes.append("RSS: see the memory profile (an operator restarted with tracemalloc "
                                           "over the same environments)")
            for measure in beside:
                done(measure)
            series.append(burst)
            log("operator: every environment deleted at once ...")
            done(bench.deletion())
            if large:
                log(f"operator: {large} environments ...")
                done(bench.scale(large, within=120.0, rss_limit=300.0, profile=False)[0])
                log(f"operator: {large} environments deleted at once ...")
                done(bench.deletion())
        finally:
            bench.stop_operator()
    finally:
        shutdown()
    docs.mkdir(parents=True, exist_ok=True)
    figure = plot(series, docs / "benchmarks.png")
    (docs / "benchmarks.md").write_text(render(measures, [str(figure)] if figure else [],
                                               time.monotonic() - started, rabbit))
    log(f"wrote {docs / 'benchmarks.md'}" + (f" and {figure}" if figure else ""))
    return measures

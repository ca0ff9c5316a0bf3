"""The bench's comparison with the topology operator: ratios and targets from what each operator did."""

from __future__ import annotations

from matchenv_devkit.bench.result import BurstRun, OperatorRun
from matchenv_devkit.bench.topology_operator import compare


def _run(latency: float, drift: float | None, seconds: float, cpu: float, rss: float) -> OperatorRun:
    return OperatorRun([latency] * 5, [drift] * 3, BurstRun([(0.0, 0.0), (seconds, 500.0)], cpu, rss))


def test_matchenv_ahead_on_every_count_meets_every_target() -> None:
    measures, series = compare(_run(0.1, 0.2, 20.0, 30.0, 150.0), _run(0.3, 6.0, 40.0, 60.0, 200.0), 10)
    latency, burst, drift = measures
    assert latency.ratio == "3.0x faster (p50)"
    assert burst.ratio == "time 2.0x faster, CPU 0.50x, RSS 0.75x theirs"
    assert drift.ratio == "30x faster (p50)"
    assert all(t.met for m in measures for t in m.targets)
    assert "500 environments" in burst.name
    assert set(series.lines) == {"matchenv operator", "topology operator v1.20.1"}


def test_more_cpu_or_memory_than_the_topology_operator_is_a_missed_target() -> None:
    _, burst, _ = compare(_run(0.1, 0.2, 20.0, 90.0, 250.0), _run(0.3, 6.0, 40.0, 60.0, 200.0), 10)[0]
    assert {t.text: t.met for t in burst.targets} == {
        "matchenv ahead (all ready)": True,
        "matchenv's CPU <= the topology operator's": False,
        "matchenv's RSS <= the topology operator's": False}


def test_a_binding_the_topology_operator_never_put_back_is_said_and_matchenv_is_ahead() -> None:
    drift = compare(_run(0.1, 0.2, 20.0, 30.0, 150.0), _run(0.3, None, 40.0, 60.0, 200.0), 10)[0][2]
    assert drift.baseline.startswith("never, 3 not back within the wait")
    assert drift.targets[0].met

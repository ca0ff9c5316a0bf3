"""The bench's burst: every environment applied in order in the background, the late one timed from its apply."""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from matchenv_devkit.bench.burst import LATE, start_burst
from matchenv_devkit.bench.operator import CPU_PARTS
from matchenv_devkit.bench.profiles import cpu_shares


def test_the_late_environment_is_applied_during_the_burst_and_timed_from_its_own_apply() -> None:
    created: list[tuple[str, float]] = []
    lock = threading.Lock()

    def create(name: str) -> None:
        time.sleep(0.01)
        with lock:
            created.append((name, time.monotonic()))

    def ready(name: str) -> bool:
        return any(n == name and time.monotonic() - t >= 0.2 for n, t in created)  # ready 0.2 s after its apply

    burst = start_burst(create, 30, ready, late_after=0.1, poll=0.01)
    burst.join(timeout=10)
    names = [n for n, _ in created]
    assert [n for n in names if n != LATE] == [f"env{i:04d}" for i in range(30)]
    assert 0 < names.index(LATE) < len(names) - 1  # during the burst, not before or after it
    assert burst.late_seconds is not None
    assert 0.2 <= burst.late_seconds < 1.0
    assert burst.applied is not None
    assert burst.applied >= 0.3


def test_a_failed_apply_is_reported_not_swallowed() -> None:
    def create(name: str) -> None:
        if name == "env0003":
            raise RuntimeError("403 forbidden")

    burst = start_burst(create, 5, lambda _n: True, late_after=0.0, poll=0.01)
    with pytest.raises(RuntimeError, match="403 forbidden"):
        burst.join(timeout=10)


def test_the_cpu_profile_counts_each_part_whose_frame_is_on_the_stack_or_innermost(tmp_path: Path) -> None:
    samples = tmp_path / "raw"
    samples.write_text(
        "proc;worker (kopf/_core/reactor/queueing.py:1);converge (matchenv/operator/handlers.py:160);"
        "Reconciler._converge (matchenv/operator/reconciler.py:101);_request (matchenv/topology/client.py:131) 3\n"
        "proc;Resync.run (matchenv/operator/resync.py:60);Reconciler._converge (matchenv/operator/reconciler.py:101)"
        ";call_api (kubernetes/client/api_client.py:12);raw_decode (json/decoder.py:353) 1\n"
        # a Kubernetes call inside pydantic's validate_call wrapper, and pydantic validating a model itself
        "proc;Reconciler._converge (matchenv/operator/reconciler.py:101);__call__ (pydantic/_validate_call.py:137)"
        ";call_api (kubernetes/client/api_client.py:12) 2\n"
        "proc;Reconciler._converge (matchenv/operator/reconciler.py:101);model_validate (pydantic/main.py:792) 2\n")
    shares = {line[8:]: line[:7].strip() for line in cpu_shares(samples, CPU_PARTS).splitlines() if "%" in line}
    # pydantic counts where it is the innermost frame only: not for the whole call it wraps
    assert shares["pydantic validating (arguments and models), anywhere"] == "25.0%"
    assert shares["kopf: watching, event processing, its patches"] == "37.5%"
    assert shares["all converges (handlers, passes, repairs)"] == "100.0%"
    assert shares["  management API calls (requests)"] == "37.5%"
    assert shares["  Kubernetes API calls (kubernetes client)"] == "37.5%"
    assert shares["resync passes"] == "12.5%"


def test_one_more_in_another_namespace_is_timed_beside_the_late_one() -> None:
    created: dict[str, float] = {}

    def create_in(namespace: str) -> Callable[[str], None]:
        def create(name: str) -> None:
            created[f"{namespace}/{name}"] = time.monotonic()
        return create

    def ready_in(namespace: str, after: float) -> Callable[[str], bool]:
        return lambda name: time.monotonic() - created.get(f"{namespace}/{name}", time.monotonic()) >= after

    burst = start_burst(create_in("a"), 3, ready_in("a", 0.3), late_after=0.05, poll=0.01,
                        elsewhere=(create_in("b"), ready_in("b", 0.1)))
    burst.join(timeout=10)
    assert burst.late_seconds is not None
    assert burst.elsewhere_seconds is not None
    assert burst.elsewhere_seconds < burst.late_seconds
    assert f"b/{LATE}" in created

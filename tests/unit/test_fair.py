"""The converge pool takes turns between namespaces: a burst in one never waits in front of another's work."""

import threading

import pytest

from matchenv.operator.fair import FairPool, flow_of


def test_a_burst_in_one_namespace_does_not_queue_in_front_of_another_namespaces_environment() -> None:
    pool = FairPool(workers=1)
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = pool.submit("gitops", gate.wait)  # the one thread is busy
        burst = [pool.submit("gitops", lambda i=i: order.append(f"gitops/{i}")) for i in range(50)]
        late = pool.submit("team-b", lambda: order.append("team-b/late"))
        gate.set()
        late.result(timeout=10)
        for future in burst:
            future.result(timeout=10)
        blocker.result(timeout=10)
    finally:
        pool.stop()
    assert order.index("team-b/late") <= 1  # at most after the burst's first, not after its fiftieth
    assert [o for o in order if o.startswith("gitops")] == [f"gitops/{i}" for i in range(50)]  # FIFO within one


def test_a_failure_reaches_whoever_waits_for_that_work_and_the_pool_goes_on() -> None:
    pool = FairPool(workers=2)
    try:
        def fail() -> None:
            raise ValueError("409 conflict")

        with pytest.raises(ValueError, match="409"):
            pool.submit("a", fail).result(timeout=10)
        assert pool.submit("a", lambda: 42).result(timeout=10) == 42
    finally:
        pool.stop()


def test_stopping_cancels_what_waits_and_refuses_more() -> None:
    pool = FairPool(workers=1)
    gate, started = threading.Event(), threading.Event()

    def run() -> bool:
        started.set()
        return gate.wait()

    running = pool.submit("a", run)
    assert started.wait(timeout=10)
    waiting = pool.submit("a", lambda: None)
    pool.stop()
    gate.set()
    assert running.result(timeout=10) is True
    assert waiting.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit("a", lambda: None)


def _applied(namespace: str, *writers: tuple[str, str, dict[str, object], str | None]) -> dict[str, object]:
    return {"metadata": {"namespace": namespace, "managedFields": [
        {"manager": manager, "time": time, "fieldsV1": fields, **({"subresource": sub} if sub else {})}
        for manager, time, fields, sub in writers]}}


def test_a_flow_is_the_namespace_and_whoever_last_wrote_the_spec() -> None:
    spec: dict[str, object] = {"f:spec": {"f:queue": {}}}
    gitops = _applied("default", ("argocd-controller", "2026-12-03T10:00:00Z", spec, None),
                      ("matchenv-operator", "2026-12-03T10:00:01Z", {"f:status": {}}, "status"),
                      ("kopf", "2026-12-03T10:00:02Z", {"f:metadata": {"f:finalizers": {}}}, None))
    assert flow_of(gitops) == "default/argocd-controller"  # the operator's own writes are not the writer
    edited = _applied("default", ("argocd-controller", "2026-12-03T10:00:00Z", spec, None),
                      ("kubectl-edit", "2026-12-03T11:00:00Z", spec, None))
    assert flow_of(edited) == "default/kubectl-edit"
    assert flow_of({"metadata": {"namespace": "team-b"}}) == "team-b/"
    assert flow_of(gitops) != flow_of(_applied("team-b", ("argocd-controller", "2026-12-03T10:00:00Z", spec, None)))

"""The process node's runner: one process per container, whichever of the node agent's threads asks first."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from matchenv_devkit.cluster.processrunner import Container, PodProcesses, ProcessRunner

SLEEP = "import time; time.sleep(60)"


def _pod(uid: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": f"pod-{uid}", "namespace": "default"},
            "spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "command": [sys.executable, "-c", SLEEP]}]}}


def test_a_status_read_while_a_pod_starts_launches_nothing_more(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The node agent's watch starts a new pod while its status loop reads every pod: a container the status read
    found not yet launched was launched by both, and the first process ran on untracked (its port held, so every
    restart of the tracked one failed to bind it)."""
    runner = ProcessRunner(client.ApiClient(), tmp_path)
    launched: list[str] = []
    original = ProcessRunner._launch
    starting = threading.Event()

    def slow_launch(self: ProcessRunner, entry: PodProcesses, c: Container) -> None:
        launched.append(c.name)
        starting.set()
        time.sleep(0.3)  # the start is slower than the status read beside it
        original(self, entry, c)

    monkeypatch.setattr(ProcessRunner, "_launch", slow_launch)
    pod = _pod("a")
    seen: list[dict[str, Any]] = []
    # the status loop on its own thread, reading while the start is under way (the start on this one: a process
    # dies with the thread that launched it)
    reader = threading.Thread(target=lambda: starting.wait(5) and seen.append(runner.status(pod)))
    reader.start()
    try:
        runner.start(pod)
        reader.join(5)
        assert launched == ["main"]
        assert len(seen) == 1
        assert seen[0]["containerStatuses"][0]["state"].get("running"), seen
    finally:
        reader.join(5)
        runner.stop(pod)


def test_a_stopped_pod_is_not_launched_again_by_a_status_read_in_flight(tmp_path: Path) -> None:
    runner = ProcessRunner(client.ApiClient(), tmp_path)
    pod = _pod("b")
    runner.start(pod)
    entry = runner._pods["b"]
    runner.stop(pod)
    container = entry.containers[0]
    container.proc, container.waiting_reason, container.next_start = None, "CrashLoopBackOff", 0.0
    runner._container_status(entry, container)  # what a status read that listed the pod before its stop does next
    assert container.proc is None

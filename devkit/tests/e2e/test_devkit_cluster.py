"""The local control plane's own promises: clear failures, `cluster up`/`down`, no processes left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matchenv_devkit.cluster.cluster import ClusterError, LocalCluster
from matchenv_devkit.cluster.versions import ControlPlaneBinaries
from matchenv_devkit.services.process import process_alive


def _fake_binaries(tmp_path: Path, etcd_script: str) -> ControlPlaneBinaries:
    binaries = ControlPlaneBinaries(tmp_path / "fake")
    binaries.bin_dir.mkdir(parents=True)
    for name in binaries.all_names:
        path = binaries.path(name)
        path.write_text(etcd_script if name == "etcd" else "#!/bin/sh\nsleep 60\n")
        path.chmod(0o755)
    return binaries


def test_a_component_that_dies_fails_start_with_its_log(tmp_path: Path) -> None:
    binaries = _fake_binaries(tmp_path, "#!/bin/sh\necho 'listen tcp: address already in use' >&2\nexit 3\n")
    cluster = LocalCluster(tmp_path / "state", binaries=binaries)
    with pytest.raises(ClusterError, match=r"etcd exited with code 3") as info:
        cluster.start(timeout=20)
    assert "address already in use" in str(info.value)
    assert not (tmp_path / "state" / "state.json").exists()


def test_cluster_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "matchenv_devkit.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.run([*cli, "cluster", "up", "--state-dir", str(state)], capture_output=True, text=True,
                        timeout=300, env=env)
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={state.resolve()}/kubeconfig" in up.stdout
    try:
        attached = LocalCluster.attach(state)
        assert attached.state is not None
        assert attached.running()
        status = subprocess.run([*cli, "cluster", "status", "--state-dir", str(state)], capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0
        namespaces = subprocess.run(attached.kubectl_cmd("get", "namespaces", "-o", "name"), capture_output=True,
                                    text=True, timeout=60)
        assert "namespace/kube-system" in namespaces.stdout
        pids = list(attached.state.pids.values())
    finally:
        down = subprocess.run([*cli, "cluster", "down", "--state-dir", str(state)], capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(process_alive(pid) for pid in pids)
    status = subprocess.run([*cli, "cluster", "status", "--state-dir", str(state)], capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 1

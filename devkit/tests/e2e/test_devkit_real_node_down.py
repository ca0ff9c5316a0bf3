"""``matchenv-dev cluster up --node real`` / ``down`` as a user runs them: down leaves no process, mount, network
namespace, veth, bridge, iptables rule or cgroup of the node's, puts back the kernel settings it changed, and frees
the disk its images were unpacked on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matchenv_devkit.cluster.nodecleanup import FIXED_DIRS, leftovers
from matchenv_devkit.cluster.realnode import SYSCTLS
from matchenv_devkit.services.process import wait_for

pytestmark = pytest.mark.node  # pods on the real node: make test runs this once the node and its images are built

DEV = [str(Path(sys.executable).with_name("matchenv-dev"))]


def _sysctls() -> dict[str, str]:
    return {key: (Path("/proc/sys") / key).read_text().strip() for key in SYSCTLS}


def _size(root: Path) -> int:
    """Bytes on disk under ``root``, not crossing into mounts (a running container's rootfs)."""
    du = subprocess.run(["du", "-sxb", str(root)], capture_output=True, text=True, timeout=120)
    return int(du.stdout.split()[0])


def test_down_leaves_nothing_behind(tmp_path_factory: pytest.TempPathFactory) -> None:
    state = tmp_path_factory.mktemp("down") / "cluster"  # short: the kubelet's socket paths must fit 107 bytes
    before = _sysctls()
    dirs_before = [d.exists() for d in FIXED_DIRS]
    assert leftovers(state / "node") == [], "the machine was not clean before the test"
    up = subprocess.run([*DEV, "cluster", "up", "--node", "real", "--state-dir", str(state)],
                        capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = state / "kubeconfig"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        kubectl = str(next(line for line in up.stdout.splitlines() if line.startswith("export PATH="))
                      .removeprefix("export PATH=").split(":")[0]) + "/kubectl"
        status = subprocess.run([*DEV, "cluster", "status", "--state-dir", str(state)], capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0
        assert "node: running" in status.stdout
        subprocess.run([kubectl, "run", "sleeper", "--image=matchenv:0.1.0", "--image-pull-policy=Never",
                        "--", "sleep", "infinity"], env=env, check=True, capture_output=True, timeout=60)
        subprocess.run([kubectl, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s"], env=env,
                       check=True, capture_output=True, timeout=100)
        running = leftovers(state / "node")
        # what down must remove is there while the node runs (so the check below can fail)
        for kind in ("process", "mount", "veth", "bridge", "iptables", "cgroup"):
            assert any(item.startswith(kind) for item in running), (kind, running)
        assert _size(state / "node") > 2**30  # the unpacked images, which down must remove
    finally:
        down = subprocess.run([*DEV, "cluster", "down", "--state-dir", str(state)], capture_output=True, text=True,
                              timeout=300)
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not leftovers(state / "node"), timeout=10, what="nothing of the node's left")
    assert leftovers(state / "node") == []
    assert _sysctls() == before
    assert [d.exists() for d in FIXED_DIRS] == dirs_before  # /run/containerd, /var/lib/cni, /var/log/containers
    # the images are imported afresh on every start: a stopped node keeps its logs, not gigabytes of layers
    assert _size(state / "node") < 200 * 2**20
    assert (state / "node" / "logs").is_dir()

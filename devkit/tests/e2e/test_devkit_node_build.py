"""The real node's binaries, built from their Go modules and cached like the control plane (``make node-build``
builds them before the suite; here they are found in the cache and run)."""

from __future__ import annotations

import subprocess
import time

import pytest

from matchenv_devkit.cluster.build import ensure_node_binaries
from matchenv_devkit.cluster.versions import CONTAINERD_VERSION, COREDNS_VERSION, KUBERNETES_VERSION, RUNC_VERSION

pytestmark = pytest.mark.node  # the node's binaries: make test runs this once they are built


def version_of(path: str, *args: str) -> str:
    result = subprocess.run([path, *args], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_node_binaries_are_cached_and_run() -> None:
    messages: list[str] = []
    started = time.monotonic()
    binaries = ensure_node_binaries(progress=messages.append)
    assert time.monotonic() - started < 5
    assert messages == []  # found in the cache: nothing rebuilt
    assert binaries.missing() == []
    assert KUBERNETES_VERSION in version_of(str(binaries.path("kubelet")), "--version")
    assert KUBERNETES_VERSION in version_of(str(binaries.path("kube-proxy")), "--version")
    assert CONTAINERD_VERSION in version_of(str(binaries.path("containerd")), "--version")
    assert CONTAINERD_VERSION in version_of(str(binaries.path("ctr")), "--version")
    runc = version_of(str(binaries.path("runc")), "--version")
    assert RUNC_VERSION.removeprefix("v") in runc
    assert "libseccomp" in runc  # built with seccomp support, as containerd's default profile needs
    assert COREDNS_VERSION.removeprefix("v") in version_of(str(binaries.path("coredns")), "-version")

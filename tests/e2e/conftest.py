"""A real control plane for the e2e tier: built (or taken from the cache) and started once per session.

If it cannot start the tests fail with the component's log; they never fall back to a fake API server.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from matchenv.crd import wait_until_served
from matchenv.devcluster.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]


class Kubectl:
    """The built kubectl, pointed at the test cluster; every call has a timeout."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cluster.kubectl_cmd(*args), input=stdin, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def apply(
        self, manifest: dict[str, Any] | str, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.run("apply", "-f", "-", *extra, stdin=text, check=check)

    def get_json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.run("get", *args, "-o", "json").stdout)
        return result


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("cluster")
    local = LocalCluster(state, log=lambda msg: print(f"[cluster] {msg}"))
    try:
        local.start()
    except Exception as exc:  # the suite must fail, not skip, without a control plane
        pytest.fail(f"the local control plane did not start: {exc}", pytrace=False)
    yield local
    local.stop()


@pytest.fixture(scope="session")
def kubectl(cluster: LocalCluster) -> Kubectl:
    return Kubectl(cluster)


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> Kubectl:
    kubectl.run("apply", "-f", str(ROOT / "crds"))
    kubectl.run("wait", "--for=condition=Established", "crd/matchenvironments.matchenv.io", "--timeout=60s")
    wait_until_served(client.CustomObjectsApi(config.new_client_from_config(str(kubectl.cluster.kubeconfig))))
    return kubectl

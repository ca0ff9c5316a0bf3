"""A real control plane for the e2e tier: built (or taken from the cache) and started once per session.

If it cannot start the tests fail with the component's log; they never fall back to a fake API server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from matchenv.crd import wait_until_served
from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.kubectl import Kubectl

ROOT = Path(__file__).resolve().parents[2]


REAL_NODE_HELPERS = ("real_node_pipeline_fixture", "real_node_fixture", "RealNode")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test module that starts the real node must say so (``pytestmark = pytest.mark.node``): make test runs those
    only once the node and its images are built."""
    for item in items:
        module = getattr(item, "module", None)
        if (module is not None and any(hasattr(module, h) for h in REAL_NODE_HELPERS)
                and item.get_closest_marker("node") is None):
            raise pytest.UsageError(f"{module.__name__} starts the real node: mark it with pytest.mark.node")


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
    kubectl.wait_established("crd/matchenvironments.matchenv.io")
    wait_until_served(client.CustomObjectsApi(config.new_client_from_config(str(kubectl.cluster.kubeconfig))))
    return kubectl


@pytest.fixture(autouse=True)
def _show_operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test that used the operator platform prints the end of the operator's log."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "platform" in request.fixturenames:
        print(request.getfixturevalue("platform").operator.log()[-6000:])

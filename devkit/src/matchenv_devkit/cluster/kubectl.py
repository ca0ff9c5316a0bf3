"""kubectl pointed at a cluster (the local one, or any kubeconfig); every call has a timeout."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from matchenv_devkit.cluster.versions import ControlPlaneBinaries


class Target(Protocol):
    """What kubectl needs of a cluster: a kubeconfig and the command line."""

    @property
    def kubeconfig(self) -> Path: ...

    def kubectl_cmd(self, *args: str) -> list[str]: ...


@dataclass(frozen=True)
class ExternalCluster:
    """A cluster this kit did not start (kind, a real one): its kubeconfig, with the pinned kubectl."""

    kubeconfig: Path

    def kubectl_cmd(self, *args: str) -> list[str]:
        return [str(ControlPlaneBinaries.default().path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]


class KubectlError(AssertionError):
    """kubectl exited non-zero; the message holds its stderr. (An AssertionError, so tests read it as a failure.)"""


class Kubectl:
    def __init__(self, cluster: Target) -> None:
        self.cluster = cluster

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cluster.kubectl_cmd(*args), input=stdin, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def apply(self, manifest: dict[str, Any] | str, *extra: str, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self.run("apply", "-f", "-", *extra, stdin=text, check=check)

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Until each CRD (``crd/<name>``) is Established. ``kubectl wait`` fails at once, instead of waiting, on a
        CRD the API server has not given a status yet (".status.conditions accessor error"): that counts as not yet."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(1, int(deadline - time.monotonic()))
            result = self.run("wait", "--for=condition=Established", *crds, f"--timeout={left}s", check=False,
                              timeout=left + 30)
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline or "accessor error" not in result.stderr:
                raise KubectlError(f"kubectl wait --for=condition=Established {' '.join(crds)} failed "
                                   f"({result.returncode}):\n{result.stderr}")
            time.sleep(0.5)

    def get_json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.run("get", *args, "-o", "json").stdout)
        return result

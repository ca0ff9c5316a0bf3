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
from matchenv_devkit.services.process import wait_for


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

    def events(self, name: str, reason: str, *args: str, kind: str = "MatchEnvironment") -> list[str]:
        """The messages of the Events with ``reason`` on the ``kind`` named ``name`` (``args``: e.g. ``-n``), oldest
        first (an Event's time is to the second: two in one second keep the API server's order)."""
        items = self.get_json("events", *args, "--field-selector",
                              f"involvedObject.kind={kind},involvedObject.name={name},reason={reason}")["items"]
        return [e["message"] for e in sorted(items, key=lambda e: e.get("eventTime") or e.get("firstTimestamp") or "")]

    def wait_event(self, name: str, reason: str, *args: str, containing: str = "", timeout: float = 30
                   ) -> list[str]:
        """Until an Event with ``reason`` on the MatchEnvironment ``name`` whose message holds ``containing`` is
        there; then every message with that reason. The operator posts its Events after the change they tell of (a
        converge's, once its status is written), so a test that saw the change waits for its Event."""
        def seen() -> list[str]:
            messages = self.events(name, reason, *args)
            return messages if any(containing in m for m in messages) else []

        messages: list[str] = wait_for(seen, timeout, f"a {reason} event on {name} holding {containing!r}")
        return messages

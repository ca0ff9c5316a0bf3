"""Pinned versions of the local control plane and where its build outputs are cached."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
# The etcd server release that Kubernetes v1.36.3's go.mod pins (go.etcd.io/etcd/server/v3).
ETCD_VERSION = "v3.6.8"

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def cache_root() -> Path:
    """Root of matchenv's build cache: ``$MATCHENV_CACHE`` or ``$XDG_CACHE_HOME/matchenv`` or ``~/.cache/matchenv``."""
    explicit = os.environ.get("MATCHENV_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "matchenv"


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Where the binaries of one pinned control-plane version live."""

    root: Path

    @classmethod
    def default(cls) -> ControlPlaneBinaries:
        return cls(cache_root() / f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}")

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def all_names(self) -> tuple[str, ...]:
        return (*COMPONENTS, "etcd")

    def missing(self) -> list[str]:
        return [n for n in self.all_names if not os.access(self.path(n), os.X_OK)]

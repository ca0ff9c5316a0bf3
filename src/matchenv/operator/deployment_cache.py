"""The worker Deployments as the watch last reported them, for the resync pass.

At 2,000 environments the pass's list of Deployments was ~19 MB of JSON, decoded at every pass: over half of a
quiet pass's CPU. The operator watches its Deployments anyway (WorkersReady follows their pods), so the pass takes
what the watch reported and lists them itself only every ``RELIST_EVERY`` passes and whenever the view is not yet
known to be whole (no list since the operator started). The list is the safety net the view needs: a watch that
was away reports what changed meanwhile, never what was deleted meanwhile.

Each Deployment is kept without ``managedFields`` (nothing reads them). Pure bookkeeping, no API call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
RELIST_EVERY = 6  # a pass in this many lists the Deployments (once a minute at the shipped 10 s resync)


def _key(deployment: Obj) -> Key:
    meta = deployment["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _kept(deployment: Obj) -> Obj:
    """``deployment`` without its ``managedFields`` (a new top level and metadata; the rest shared)."""
    meta = {k: v for k, v in deployment["metadata"].items() if k != "managedFields"}
    return {**deployment, "metadata": meta}


class DeploymentCache(Mapping[Key, Obj]):
    """What the watch reported of each Deployment (read as a mapping by (namespace, name), as it is now), and when
    the pass must list them instead."""

    def __init__(self, relist_every: int = RELIST_EVERY) -> None:
        self.relist_every = relist_every
        self._lock = threading.Lock()
        self._items: dict[Key, Obj] = {}
        self._reports = 0  # the watch's reports so far
        self._reported: dict[Key, int] = {}  # each Deployment's last report (its number), since the last list began
        self._passes = -1  # passes since the last list; -1: none yet (the view is not known to be whole)

    def seen(self, deployment: Obj, deleted: bool = False) -> None:
        """The watch reported ``deployment`` (``deleted``: it is gone)."""
        key = _key(deployment)
        with self._lock:
            self._reports += 1
            self._reported[key] = self._reports
            if deleted:
                self._items.pop(key, None)
            else:
                self._items[key] = _kept(deployment)

    def __getitem__(self, key: Key) -> Obj:
        with self._lock:
            return self._items[key]

    def __iter__(self) -> Iterator[Key]:
        with self._lock:
            return iter(list(self._items))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def view(self) -> tuple[Mapping[Key, Obj] | None, int]:
        """For one pass: the Deployments (this cache, read as each environment is converged), or None when the
        pass is to list them, with the mark to hand :meth:`listed` (the reports so far)."""
        with self._lock:
            if self._passes < 0 or self._passes + 1 >= self.relist_every:
                return None, self._reports
            self._passes += 1
            return self, self._reports

    def listed(self, deployments: list[Obj], mark: int) -> Mapping[Key, Obj]:
        """A pass's list, begun at ``mark``: it is the truth for every Deployment the watch has not reported since
        (present or not), and the view is whole from now on. Returns the view (this cache)."""
        fresh = {_key(d): d for d in deployments}
        with self._lock:
            for key in [k for k in self._items if k not in fresh and self._reported.get(k, 0) <= mark]:
                del self._items[key]
            for key, deployment in fresh.items():
                if self._reported.get(key, 0) <= mark:
                    self._items[key] = _kept(deployment)
            self._reported = {k: n for k, n in self._reported.items() if n > mark}
            self._passes = 0
        return self

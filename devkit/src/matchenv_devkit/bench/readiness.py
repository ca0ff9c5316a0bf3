"""When each object of a kind first showed ready, seen on one watch, as ``kubectl wait`` sees it.

Reading each object in a loop instead loads the API server the measure runs on (matchenv's status writes and the
topology operator's go through it) and adds the loop's own interval and each read's time to every figure.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, watch

Obj = dict[str, Any]


class FirstReady:
    """One watch of ``plural`` in ``namespace``: the monotonic time each object was first seen ``ready``."""

    def __init__(self, custom: client.CustomObjectsApi, group: str, version: str, namespace: str, plural: str,
                 ready: Callable[[Obj], bool], timeout: float = 1800) -> None:
        self.what = f"{plural} in {namespace}"
        self._ready = ready
        self._seen: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stream = watch.Watch()
        # from a list's resourceVersion: whatever happens after this returns is sent, however late the watch's
        # own request gets through
        listed: Any = custom.list_namespaced_custom_object(group, version, namespace, plural, limit=1)
        self._thread = threading.Thread(
            target=self._follow, daemon=True,
            args=(custom, group, version, namespace, plural, listed["metadata"]["resourceVersion"], timeout))
        self._thread.start()

    def _follow(self, custom: client.CustomObjectsApi, group: str, version: str, namespace: str, plural: str,
                since: str, timeout: float) -> None:
        with contextlib.suppress(urllib3.exceptions.HTTPError):  # the stream cut when it is stopped
            for event in self._stream.stream(custom.list_namespaced_custom_object, group, version, namespace,
                                             plural, resource_version=since, timeout_seconds=int(timeout)):
                obj = event["object"]
                name = obj["metadata"]["name"]
                if name not in self._seen and self._ready(obj):
                    with self._changed:
                        self._seen[name] = time.monotonic()
                        self._changed.notify_all()

    def at(self, name: str, timeout: float = 60) -> float:
        """When ``name`` was first seen ready (``time.monotonic()``), waiting up to ``timeout`` for it."""
        with self._changed:
            if not self._changed.wait_for(lambda: name in self._seen, timeout):
                raise RuntimeError(f"{name} ({self.what}) not ready in {timeout:.0f} s")
            return self._seen[name]

    def names(self) -> set[str]:
        """The objects seen ready so far."""
        with self._changed:
            return set(self._seen)

    def stop(self) -> None:
        self._stream.stop()

"""Converges and teardowns on a pool of threads that takes turns between flows: namespaces, and their writers.

kopf runs synchronous handlers on one first-come-first-served pool: 500 environments applied at once by one team
(a GitOps sync) put another team's single environment behind all of them. Here each flow has its own queue, and a
free thread takes the next item of the next flow in turn, so a burst waits behind itself only. A flow is a
namespace and the writer of the environment's spec (:func:`flow_of`: a GitOps controller, kubectl, a CI job), the
way the API server's own priority and fairness tells its clients apart: an engineer's ``kubectl apply`` during a
GitOps sync of 500 in the same namespace waits for one of them, not for all. Within a flow the order stays first
come, first served.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

WORKERS = 8  # as many converges at once as kopf's own pool ran


def flow_of(obj: Mapping[str, Any]) -> str:
    """``namespace/writer``: the writer is the field manager that last wrote the spec (``metadata.managedFields``,
    status and other subresources left out); an object without that record is its namespace's alone."""
    metadata = obj.get("metadata") or {}
    writers = [entry for entry in metadata.get("managedFields") or []
               if not entry.get("subresource") and "f:spec" in (entry.get("fieldsV1") or {})]
    latest: Mapping[str, Any] = max(writers, key=lambda entry: entry.get("time") or "", default={})
    return f"{metadata.get('namespace') or ''}/{latest.get('manager') or ''}"


class FairPool:
    """``workers`` threads; :meth:`submit` queues work under a flow (:func:`flow_of`), served round-robin."""

    def __init__(self, workers: int = WORKERS, name: str = "converge") -> None:
        self._flows: OrderedDict[str, deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]] = \
            OrderedDict()
        self._ready = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, flow: str, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._ready:
            if self._stopped:
                raise RuntimeError("the pool is stopped")
            self._flows.setdefault(flow, deque()).append((fn, future))
            self._ready.notify()
        return future

    def _next(self) -> tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None:
        with self._ready:
            while not self._flows and not self._stopped:
                self._ready.wait()
            if self._stopped:
                return None
            flow, items = next(iter(self._flows.items()))
            item = items.popleft()
            del self._flows[flow]
            if items:
                self._flows[flow] = items  # to the back: every other flow's next item comes first
            return item

    def _work(self) -> None:
        while (item := self._next()) is not None:
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to whoever awaits it
                future.set_exception(exc)

    def stop(self) -> None:
        """No new work; what is queued is cancelled, what runs finishes."""
        with self._ready:
            self._stopped = True
            for items in self._flows.values():
                for _fn, future in items:
                    future.cancel()
            self._flows.clear()
            self._ready.notify_all()

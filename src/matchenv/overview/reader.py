"""What ``matchenv status`` reads: the MatchEnvironments (their status) and, through the API server's pod proxy,
their running workers' metrics — nothing of the broker's or the databases' credentials is needed."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from matchenv.api import API_GROUP, API_VERSION, PLURAL

NEWEST_STORED = "matchenv_worker_newest_stored_scrape_timestamp_seconds"
METRICS_PORT_NAME = "metrics"


class ReadError(Exception):
    """The Kubernetes API could not be read."""


def environments(api: client.ApiClient, namespace: str | None, timeout: float) -> list[dict[str, Any]]:
    """The MatchEnvironments of ``namespace`` (None: of every namespace)."""
    objects = client.CustomObjectsApi(api)
    try:
        if namespace is None:
            listed = objects.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL, _request_timeout=timeout)
        else:
            listed = objects.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL,
                                                           _request_timeout=timeout)
    except ApiException as exc:
        raise ReadError(f"cannot list MatchEnvironments: {exc.status} {exc.reason}") from exc
    except Exception as exc:  # connection refused, DNS, timeout
        raise ReadError(f"cannot reach the Kubernetes API: {exc.__class__.__name__} {exc}") from exc
    items: list[dict[str, Any]] = cast(dict[str, Any], listed).get("items") or []
    return items


def newest_stored(api: client.ApiClient, environment: dict[str, Any], deadline: float) -> float | None:
    """The newest scrape stamp any running worker pod of ``environment`` stored since it started; None when none
    is running, none has stored anything yet, or none could be asked before ``deadline`` (monotonic)."""
    namespace = environment["metadata"]["namespace"]
    selector = (environment.get("status") or {}).get("selector")
    if not selector:
        return None
    core = client.CoreV1Api(api)
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=selector, field_selector="status.phase=Running",
                                        _request_timeout=_left(deadline)).items
    except Exception:  # an unreadable pod list leaves the column unknown, never the whole table
        return None
    stamps = [s for s in (_pod_stamp(core, namespace, pod, deadline) for pod in pods) if s]
    return max(stamps) if stamps else None


def newest_by_environment(api: client.ApiClient, items: Iterable[dict[str, Any]], timeout: float
                          ) -> dict[tuple[str, str], float | None]:
    """:func:`newest_stored` of each environment, asked at once, all within ``timeout`` seconds."""
    listed = list(items)
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=8) as pool:
        stamps = list(pool.map(lambda e: newest_stored(api, e, deadline), listed))
    return {(e["metadata"]["namespace"], e["metadata"]["name"]): s for e, s in zip(listed, stamps, strict=True)}


def _pod_stamp(core: client.CoreV1Api, namespace: str, pod: Any, deadline: float) -> float | None:
    port = next((p.container_port for c in pod.spec.containers for p in (c.ports or [])
                 if p.name == METRICS_PORT_NAME), None)
    if port is None or time.monotonic() >= deadline:
        return None
    try:
        text = core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod.metadata.name}:{port}", namespace, "metrics", _request_timeout=_left(deadline))
    except Exception:  # a pod that does not answer (starting, stopping, no rights to proxy) is not counted
        return None
    return parse_newest(str(text))


def parse_newest(exposition: str) -> float | None:
    """The newest-stored gauge of one worker's metrics page; None before its first store (the gauge is 0)."""
    for family in text_string_to_metric_families(exposition):
        if family.name == NEWEST_STORED:
            values = [s.value for s in family.samples if s.value > 0]
            return max(values) if values else None
    return None


def _left(deadline: float) -> float:
    return max(0.5, deadline - time.monotonic())

"""Which cluster matchenv speaks for on a broker: ``MATCHENV_CLUSTER_ID``, else from the ``kube-system`` namespace's
UID (stable for the cluster's life, the same for every operator replica and for ``matchenv dlq``)."""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from matchenv.naming import cluster_id_from_uid

IDENTITY_NAMESPACE = "kube-system"


class ClusterIdentityError(RuntimeError):
    """The identity cannot be read: nothing may be made on a broker without it."""


def cluster_identity(core: client.CoreV1Api, override: str = "", timeout: float = 10.0) -> str:
    """``override`` (MATCHENV_CLUSTER_ID) if set, else read from the cluster."""
    if override:
        return override
    try:
        namespace = core.read_namespace(IDENTITY_NAMESPACE, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            raise ClusterIdentityError(f"namespace {IDENTITY_NAMESPACE} does not exist: set MATCHENV_CLUSTER_ID") \
                from exc
        raise ClusterIdentityError(
            f"cannot read namespace {IDENTITY_NAMESPACE} for the cluster's identity: {exc.status} {exc.reason}; "
            f"grant `get` on it (the manifests and chart do) or set MATCHENV_CLUSTER_ID") from exc
    uid = namespace.metadata.uid if namespace.metadata is not None else None
    if not uid:
        raise ClusterIdentityError(f"namespace {IDENTITY_NAMESPACE} has no UID: set MATCHENV_CLUSTER_ID")
    return cluster_id_from_uid(str(uid))

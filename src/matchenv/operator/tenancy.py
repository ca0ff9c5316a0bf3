"""Who may touch what (pure): the bounds the operator's administrator sets, and ownership of Kubernetes objects.

Broker-side ownership (one queue, one owner) is decided by the planner against the snapshot; this module holds the
rest of the rules a MatchEnvironment of one team must not break for another.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any
from urllib.parse import urlsplit

from matchenv.contracts import split_urls
from matchenv.operator.settings import OperatorSettings
from matchenv.topology.desired import DesiredTopology
from matchenv.topology.planner import Refusal

NOT_ALLOWED = "NotAllowed"


def bounds_refusal(desired: DesiredTopology, settings: OperatorSettings) -> Refusal | None:
    """For environments on the operator's own broker Secret: queue, exchange and vhost inside the configured
    bounds, or a refusal that names the setting."""
    pattern = settings.queue_pattern_for(desired.names.namespace)
    if not re.search(pattern, desired.queue.name):
        return Refusal(NOT_ALLOWED, f"queue {desired.queue.name} does not match the operator's queue pattern "
                       f"{pattern!r} (setting MATCHENV_QUEUE_PATTERN)")
    if desired.exchange not in settings.allowed_exchanges:
        return Refusal(NOT_ALLOWED, f"exchange {desired.exchange} is not one of the operator's allowed exchanges "
                       f"{', '.join(settings.allowed_exchanges)} (setting MATCHENV_ALLOWED_EXCHANGES)")
    if desired.vhost not in settings.allowed_vhosts:
        return Refusal(NOT_ALLOWED, f"vhost {desired.vhost} is not one of the operator's allowed vhosts "
                       f"{', '.join(settings.allowed_vhosts)} (setting MATCHENV_ALLOWED_VHOSTS)")
    namespace = desired.names.namespace
    if desired.adopt and namespace not in settings.adopt_namespaces and "*" not in settings.adopt_namespaces:
        return Refusal(NOT_ALLOWED, f"spec.queue.adopt takes over a queue not made by matchenv with its messages, "
                       f"which needs the administrator's consent: namespace {namespace} is not in the operator's "
                       "setting MATCHENV_ADOPT_NAMESPACES")
    overflow = desired.policy_definition.get("overflow")
    if overflow in ("reject-publish", "reject-publish-dlx") and not settings.allow_reject_publish:
        return Refusal(NOT_ALLOWED, f"queue.overflow {overflow} makes the broker refuse every publish to "
                       f"{desired.exchange} while this queue is full, for every environment on it; use drop-head "
                       "(the default) or ask the administrator (setting MATCHENV_ALLOW_REJECT_PUBLISH)")
    return None


def tenant_broker_refusal(management_url: str, amqp_url: str, settings: OperatorSettings) -> Refusal | None:
    """For environments with their own broker.connectionSecretRef: the administrator may turn that off or allow
    only some hosts (the operator calls whatever the Secret names)."""
    allowed = settings.tenant_broker_hosts
    if allowed is None:
        return None
    if not allowed:
        return Refusal(NOT_ALLOWED, "broker.connectionSecretRef is turned off by the operator's administrator "
                       "(setting MATCHENV_TENANT_BROKER_HOSTS=none): use the operator's broker")
    for url in [*split_urls(management_url), *split_urls(amqp_url)]:  # every node of a cluster
        host = urlsplit(url).hostname or ""
        if not any(fnmatch.fnmatchcase(host.lower(), pattern.lower()) for pattern in allowed):
            return Refusal(NOT_ALLOWED, f"the broker Secret names host {host or url!r}, which is not one of the "
                           f"operator's allowed broker hosts {', '.join(allowed)} (setting "
                           "MATCHENV_TENANT_BROKER_HOSTS)")
    return None


def owned_by(obj: dict[str, Any] | None, uid: str) -> bool:
    """Whether ``obj`` has an ownerReference to the object ``uid`` (the MatchEnvironment that made it)."""
    if obj is None:
        return False
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def not_owned(kind: str, namespace: str, name: str) -> str:
    return (f"{kind} {namespace}/{name} exists and is not owned by this MatchEnvironment (no ownerReference to "
            "it): it is left as it is; rename or delete it to let the operator create its own")

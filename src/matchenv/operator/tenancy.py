"""Who may touch what (pure): the bounds the operator's administrator sets, and ownership of Kubernetes objects.

Broker-side ownership (one queue, one owner) is decided by the planner against the snapshot; this module holds the
rest of the rules a MatchEnvironment of one team must not break for another.
"""

from __future__ import annotations

import re
from typing import Any

from matchenv.operator.settings import OperatorSettings
from matchenv.topology.desired import DesiredTopology
from matchenv.topology.planner import Refusal

NOT_ALLOWED = "NotAllowed"


def bounds_refusal(desired: DesiredTopology, settings: OperatorSettings) -> Refusal | None:
    """For environments on the operator's own broker Secret: queue, exchange and vhost inside the configured
    bounds, or a refusal that names the setting."""
    if not re.search(settings.queue_pattern, desired.queue.name):
        return Refusal(NOT_ALLOWED, f"queue {desired.queue.name} does not match the operator's queue pattern "
                       f"{settings.queue_pattern!r} (setting MATCHENV_QUEUE_PATTERN)")
    if desired.exchange not in settings.allowed_exchanges:
        return Refusal(NOT_ALLOWED, f"exchange {desired.exchange} is not one of the operator's allowed exchanges "
                       f"{', '.join(settings.allowed_exchanges)} (setting MATCHENV_ALLOWED_EXCHANGES)")
    if desired.vhost not in settings.allowed_vhosts:
        return Refusal(NOT_ALLOWED, f"vhost {desired.vhost} is not one of the operator's allowed vhosts "
                       f"{', '.join(settings.allowed_vhosts)} (setting MATCHENV_ALLOWED_VHOSTS)")
    return None


def owned_by(obj: dict[str, Any] | None, uid: str) -> bool:
    """Whether ``obj`` has an ownerReference to the object ``uid`` (the MatchEnvironment that made it)."""
    if obj is None:
        return False
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def not_owned(kind: str, namespace: str, name: str) -> str:
    return (f"{kind} {namespace}/{name} exists and is not owned by this MatchEnvironment (no ownerReference to "
            "it): it is left as it is; rename or delete it to let the operator create its own")

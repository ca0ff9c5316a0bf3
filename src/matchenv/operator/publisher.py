"""The scraper's credentials: one publish-only broker user per operator, its password in a Secret the scraper reads.

The leader keeps, on the operator's own broker, the user ``matchenv-publisher.<cluster>.<operator namespace>`` that
may write to the allowed exchanges and do nothing else, and the Secret ``<operator namespace>/matchenv-publisher`` (keys
``url``, ``username``, ``password``) that the CronJob's ``RABBITMQ_URL`` comes from. The Secret is minted once and
written before the user is set, so no user ever has a password nobody knows. A Secret of that name that the
operator did not make (no ``managed-by`` label) is the user's own: it is left alone, and so is the broker.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from matchenv import contracts as c
from matchenv.connection import BrokerConnection, decode_secret_data, worker_amqp_url
from matchenv.naming import MANAGED_BY, MANAGED_BY_LABEL, legacy_publisher_user_name, publisher_user_name
from matchenv.operator.kube import Kube, Obj
from matchenv.operator.settings import OperatorSettings
from matchenv.topology.applier import apply_plan
from matchenv.topology.desired import desired_publisher
from matchenv.topology.planner import DeleteUser, Plan, plan_publisher
from matchenv.topology.snapshot import BrokerSnapshot

log = logging.getLogger("matchenv.operator")


def build_publisher_secret(namespace: str, name: str, broker_url: str, user: str, password: str,
                           vhost: str, owner: Obj | None = None) -> Obj:
    """Secret with the scraper's AMQP URL (the publisher user's credentials and vhost in it); ``owner``: the
    operator's Deployment, so that the Secret goes with the installation."""
    metadata: Obj = {"name": name, "namespace": namespace,
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY, "app.kubernetes.io/component": "publisher"}}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "stringData": {c.WORKER_SECRET_URL: worker_amqp_url(broker_url, user, password, vhost),
                       c.WORKER_SECRET_USERNAME: user, c.WORKER_SECRET_PASSWORD: password},
    }


def ensure_publisher(kube: Kube, settings: OperatorSettings, conn: BrokerConnection, client: Any,
                     secret: Obj | None, snapshot: Callable[[], BrokerSnapshot], owner: Obj | None = None
                     ) -> list[str]:
    """Bring the publisher's Secret (``secret`` as read, None if missing) and broker user to what ``settings``
    allow; what was done, for the log."""
    namespace, name = settings.operator_namespace, settings.publisher_secret
    user = publisher_user_name(settings.cluster_id, namespace)
    if secret is not None and (secret["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
        return []  # the user's own publisher credentials
    current = decode_secret_data((secret or {}).get("data"))
    password = current.get(c.WORKER_SECRET_PASSWORD) or secrets.token_urlsafe(24)
    vhosts = settings.allowed_vhosts or ["/"]
    body = build_publisher_secret(namespace, name, conn.url, user, password, vhosts[0], owner)
    done = []
    owners = (secret or {}).get("metadata", {}).get("ownerReferences") or []
    if current != body["stringData"] or (owner is not None and owner not in owners):
        kube.apply_secret(body)
        done.append(f"wrote Secret {namespace}/{name} for broker user {user}")
    desired = desired_publisher(user, settings.allowed_exchanges, vhosts)
    actions = plan_publisher(desired, live := snapshot(), password)
    legacy = legacy_publisher_user_name(namespace)
    if current.get(c.WORKER_SECRET_USERNAME) == legacy and legacy in live.users:
        # the Secret named the user of a version before the cluster identity: it goes once the Secret names the
        # new one (other clusters' operators of that version may keep the same name: never deleted again)
        actions += (DeleteUser(vhosts[0], legacy),)
    done += apply_plan(client, Plan(actions), lambda a: kube.may_write(a.describe(), "broker"))
    for what in done:
        log.info("publisher: %s", what)
    return done

"""Step: the worker's broker credentials, kept in the environment's broker Secret."""

from __future__ import annotations

import secrets

from matchenv.api import API_GROUP
from matchenv.connection import BrokerConnection
from matchenv.contracts import WORKER_SECRET_PASSWORD
from matchenv.operator import builders
from matchenv.operator.context import Context, Services
from matchenv.operator.kube import Obj
from matchenv.operator.tenancy import owned_by

ROTATE_ANNOTATION = f"{API_GROUP}/rotate-credentials"  # on the MatchEnvironment: a new value → a new password
ROTATED_ANNOTATION = f"{API_GROUP}/rotated-for"  # on the broker Secret: the rotation value it was minted for


def holds_password(secret: Obj | None, uid: str) -> bool:
    """Whether ``secret`` is this environment's and holds a worker password."""
    return owned_by(secret, uid) and bool(((secret or {}).get("data") or {}).get(WORKER_SECRET_PASSWORD))


def ensure_credentials(s: Services, ctx: Context, conn: BrokerConnection, secret: Obj | None,
                       current: dict[str, str]) -> dict[str, str]:
    """The broker Secret with the worker's password, as it stands after the step: kept as it is, minted once (only
    when a fresh read says there is none), or minted anew when ``matchenv.io/rotate-credentials`` asks for it.
    Written before the broker user is set, so a crash between the two never leaves a user whose password nobody
    knows; the topology plan then sets the user's password whenever the broker's hash does not match the Secret."""
    rotation = ctx.annotations.get(ROTATE_ANNOTATION) or ""
    rotated_for = ((secret or {}).get("metadata", {}).get("annotations") or {}).get(ROTATED_ANNOTATION) or ""
    password = current.get(WORKER_SECRET_PASSWORD) or ""
    rotate = bool(password) and rotation != rotated_for
    if not password or rotate:
        password = secrets.token_urlsafe(24)
    body = builders.build_broker_secret(ctx.names, ctx.owner_reference, conn.url, password, ctx.spec.broker.vhost,
                                        annotations={ROTATED_ANNOTATION: rotation} if rotation else None)
    if current != body["stringData"] or rotation != rotated_for:
        s.kube.apply_secret(body)
        what = ("BrokerCredentialsRotated" if rotate else
                "BrokerSecretUpdated" if current.get(WORKER_SECRET_PASSWORD) else "BrokerSecretCreated")
        s.event(ctx.env, what, f"wrote Secret {ctx.names.broker_secret} for broker user {ctx.names.broker_user}"
                + (" with a new password" if rotate else ""))
    data: dict[str, str] = body["stringData"]
    return data

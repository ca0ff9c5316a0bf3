"""Step: the worker's broker credentials, kept in the environment's broker Secret."""

from __future__ import annotations

import secrets

from matchenv.api import API_GROUP
from matchenv.connection import BrokerConnection, SecretDecodeError, decode_secret_data
from matchenv.contracts import WORKER_SECRET_PASSWORD
from matchenv.operator import builders
from matchenv.operator.context import Context, Services
from matchenv.operator.kube import Obj
from matchenv.operator.tenancy import owned_by

ROTATE_ANNOTATION = f"{API_GROUP}/rotate-credentials"  # on the MatchEnvironment: a new value → a new password
ROTATED_ANNOTATION = f"{API_GROUP}/rotated-for"  # on the broker Secret: the rotation value it was minted for
MIN_PASSWORD = 12  # characters of a team's own password


def holds_password(secret: Obj | None, uid: str) -> bool:
    """Whether ``secret`` is this environment's and holds a worker password."""
    return owned_by(secret, uid) and bool(((secret or {}).get("data") or {}).get(WORKER_SECRET_PASSWORD))


def team_password(s: Services, ctx: Context) -> tuple[str | None, str | None]:
    """(the password in the team's Secret of ``spec.broker.passwordSecretRef``, or None without one; what is wrong
    with that Secret, or None)."""
    ref = ctx.spec.broker.password_secret_ref
    if ref is None:
        return None, None
    where = f"Secret {ctx.namespace}/{ref.name} (spec.broker.passwordSecretRef)"
    secret = s.secret(ctx.namespace, ref.name, ctx.prefetched)
    if secret is None:
        return None, f"{where} does not exist: no broker user, no workers until it does"
    try:
        value = decode_secret_data(secret.get("data")).get(ref.key, "")
    except SecretDecodeError as exc:
        return None, f"{where}: {exc}"
    if len(value) < MIN_PASSWORD or value != value.strip():
        return None, (f"{where} has no usable password under key {ref.key!r}: at least {MIN_PASSWORD} characters, "
                      "without surrounding spaces")
    return value, None


def ensure_credentials(s: Services, ctx: Context, conn: BrokerConnection, secret: Obj | None,
                       current: dict[str, str], given: str | None = None) -> dict[str, str]:
    """The broker Secret with the worker's password, as it stands after the step: ``given`` (the team's, from
    ``spec.broker.passwordSecretRef``), else kept as it is, minted once (only when a fresh read says there is none),
    or minted anew when ``matchenv.io/rotate-credentials`` asks for it. Written before the broker user is set, so a
    crash between the two never leaves a user whose password nobody knows; the topology plan then sets the user's
    password whenever the broker's hash does not match the Secret."""
    rotation = ctx.annotations.get(ROTATE_ANNOTATION) or ""
    rotated_for = ((secret or {}).get("metadata", {}).get("annotations") or {}).get(ROTATED_ANNOTATION) or ""
    password = current.get(WORKER_SECRET_PASSWORD) or ""
    rotate = given is None and bool(password) and rotation != rotated_for
    followed = given is not None and bool(password) and given != password
    if given is not None:
        password = given
    elif not password or rotate:
        password = secrets.token_urlsafe(24)
    body = builders.build_broker_secret(ctx.names, ctx.owner_reference, conn.url, password, ctx.spec.broker.vhost,
                                        annotations={ROTATED_ANNOTATION: rotation} if rotation else None)
    if current != body["stringData"] or rotation != rotated_for:
        s.kube.apply_secret(body)
        what = ("BrokerCredentialsRotated" if rotate or followed else
                "BrokerSecretUpdated" if current.get(WORKER_SECRET_PASSWORD) else "BrokerSecretCreated")
        ref = ctx.spec.broker.password_secret_ref
        source = f" (the password of Secret {ref.name}, key {ref.key})" if ref is not None else ""
        s.event(ctx.env, what, f"wrote Secret {ctx.names.broker_secret} for broker user {ctx.names.broker_user}"
                + (" with a new password" if rotate or followed else "") + source)
    data: dict[str, str] = body["stringData"]
    return data

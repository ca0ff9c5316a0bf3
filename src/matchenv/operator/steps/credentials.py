"""Step: the worker's broker credentials, kept in the environment's broker Secret."""

from __future__ import annotations

import datetime as dt
import secrets

from matchenv.api import API_GROUP, duration_seconds
from matchenv.connection import BrokerConnection, SecretDecodeError, decode_secret_data
from matchenv.contracts import WORKER_SECRET_PASSWORD, WORKER_SECRET_USERNAME
from matchenv.operator import builders
from matchenv.operator.context import Context, Services
from matchenv.operator.kube import Obj
from matchenv.operator.status import parse_rfc3339, rfc3339
from matchenv.operator.tenancy import owned_by

ROTATE_ANNOTATION = f"{API_GROUP}/rotate-credentials"  # on the MatchEnvironment: a new value → a new password
ROTATED_ANNOTATION = f"{API_GROUP}/rotated-for"  # on the broker Secret: the rotation value it was minted for
ROTATED_AT_ANNOTATION = f"{API_GROUP}/rotated-at"  # on the broker Secret: when its password was minted
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
                       current: dict[str, str], given: str | None = None, previous: str | None = None
                       ) -> tuple[dict[str, str], Obj | None]:
    """The broker Secret's data (the worker's user and password) and the Secret, as they stand after the step. The
    password is ``given`` (the team's, from ``spec.broker.passwordSecretRef``), else kept as it is, minted once (only
    when a fresh read says there is none), or rotated when ``matchenv.io/rotate-credentials`` asks or
    ``spec.broker.rotateEvery`` is due. A rotation switches to the worker's other user with a new password; it waits
    while that user is still a rotation's ``previous`` (a worker pod may run with it). Written before the broker user
    is set, so a crash between the two never leaves a user whose password nobody knows; the topology plan then sets
    the user's password whenever the broker's hash does not match the Secret."""
    names = ctx.names
    rotation = ctx.annotations.get(ROTATE_ANNOTATION) or ""
    annotations = dict(((secret or {}).get("metadata") or {}).get("annotations") or {})
    rotated_for = annotations.get(ROTATED_ANNOTATION) or ""
    password = current.get(WORKER_SECRET_PASSWORD) or ""
    user = names.worker_user_named(current.get(WORKER_SECRET_USERNAME, ""))
    now = dt.datetime.now(dt.UTC)
    due = next_rotation(ctx, secret)
    asked = given is None and bool(password) and (rotation != rotated_for or (due is not None and due <= now))
    rotate = asked and previous is None
    followed = given is not None and bool(password) and given != password
    if given is not None:
        password = given
    elif not password or rotate:
        password = secrets.token_urlsafe(24)
        if rotate:
            user = names.other_worker_user(user)
    kept = {k: v for k, v in annotations.items() if k in (ROTATED_ANNOTATION, ROTATED_AT_ANNOTATION)}
    wanted = dict(kept)
    if rotate or followed or not current.get(WORKER_SECRET_PASSWORD):  # a password set now
        wanted[ROTATED_AT_ANNOTATION] = rfc3339(now)
        wanted.pop(ROTATED_ANNOTATION, None)
        if rotation:  # the annotation's value it answers (absent: it was removed)
            wanted[ROTATED_ANNOTATION] = rotation
    body = builders.build_broker_secret(names, ctx.owner_reference, conn.url, password, ctx.spec.broker.vhost,
                                        annotations=wanted or None, user=user)
    if current != body["stringData"] or wanted != kept:
        secret = s.kube.apply_secret(body)
        what = ("BrokerCredentialsRotated" if rotate or followed else
                "BrokerSecretUpdated" if current.get(WORKER_SECRET_PASSWORD) else "BrokerSecretCreated")
        ref = ctx.spec.broker.password_secret_ref
        source = f" (the password of Secret {ref.name}, key {ref.key})" if ref is not None else ""
        switched = f"; broker user {names.other_worker_user(user)} stays until no worker pod runs with it" \
            if rotate and current.get(WORKER_SECRET_PASSWORD) else ""
        s.event(ctx.env, what, f"wrote Secret {names.broker_secret} for broker user {user}"
                + (" with a new password" if rotate or followed else "") + source + switched)
    data: dict[str, str] = body["stringData"]
    return data, secret


def next_rotation(ctx: Context, secret: Obj | None) -> dt.datetime | None:
    """When spec.broker.rotateEvery next rotates the password (counted from the last rotation, else from the
    Secret's creation); None without it."""
    every = ctx.spec.broker.rotate_every
    if every is None or ctx.spec.broker.password_secret_ref is not None:
        return None
    since = parse_rfc3339(password_set_at(secret))
    return None if since is None else since + dt.timedelta(seconds=duration_seconds(every))


def password_set_at(secret: Obj | None) -> str | None:
    """When the Secret's password was set: its last rotation, else its creation (RFC 3339, as the API server
    writes it)."""
    meta = (secret or {}).get("metadata") or {}
    return (meta.get("annotations") or {}).get(ROTATED_AT_ANNOTATION) or meta.get("creationTimestamp")


def credentials_status(ctx: Context, secret: Obj | None, data: dict[str, str], previous: str | None) -> Obj:
    """status.credentials: the user the Secret names, when its password was set, the next rotation, and the previous
    user while it stays."""
    due = next_rotation(ctx, secret)
    return {"user": data.get(WORKER_SECRET_USERNAME), "rotatedAt": password_set_at(secret),
            "nextRotationAt": rfc3339(due) if due is not None else None, "previousUser": previous,
            "previousUserProblem": None}  # the rotation step says why, while the broker refuses its removal

"""The Secrets of an environment's extra broker users (the backfill Job's, Flower's): a password minted once and
written before the user is set, so a crash between the two never leaves a user whose password nobody knows."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from matchenv.connection import decode_secret_data
from matchenv.contracts import WORKER_SECRET_PASSWORD
from matchenv.operator.kube import Kube, Obj
from matchenv.operator.tenancy import owned_by


class SecretNotOwned(Exception):
    """The Secret exists and is someone else's: that user waits, the environment goes on without it."""


def extra_user_password(kube: Kube, namespace: str, name: str, uid: str, build: Callable[[str], Obj],
                        what: str) -> str:
    """The password in Secret ``namespace/name`` (the environment ``uid``'s), minted when there is none; the
    Secret (``build(password)``) written when it differs. ``what``: whose credentials, for the error."""
    secret = kube.get_secret(namespace, name)
    data = decode_secret_data((secret or {}).get("data")) if owned_by(secret, uid) else {}
    password = data.get(WORKER_SECRET_PASSWORD) or secrets.token_urlsafe(24)
    body = build(password)
    if data != body["stringData"]:
        if secret is not None and not owned_by(secret, uid):
            raise SecretNotOwned(f"Secret {name} exists and is not this environment's: {what} cannot have its "
                                 "credentials (rename or delete that Secret)")
        kube.apply_secret(body)
    return password

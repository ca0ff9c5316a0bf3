"""How the operator names a failure: the reason a condition or event gives, and a short description for a log."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from matchenv.connection import BrokerConfigError
from matchenv.topology.client import BrokerAuthError, BrokerConflict, BrokerUnreachable


class TeardownIncomplete(Exception):
    """A deletion step cannot finish yet (broker unreachable, workers still stopping); it is retried."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


def error_reason(exc: Exception) -> str:
    """The condition reason (and event reason) for a failure to reach or use a broker."""
    if isinstance(exc, BrokerUnreachable):
        return "BrokerUnreachable"
    if isinstance(exc, BrokerAuthError):
        return "BrokerAuthFailed"
    if isinstance(exc, BrokerConflict):
        return "BrokerConflict"
    if isinstance(exc, BrokerConfigError):
        return "BrokerSecretInvalid"
    return "BrokerError"


def broker_error_message(exc: Exception, secret: str) -> str:
    """A failure to reach or use the broker of Secret ``secret`` (namespace/name), in words: what is wrong, where
    to look; the client's own words in brackets."""
    if isinstance(exc, BrokerUnreachable):
        return (f"cannot reach the broker's management API ({exc}): check the broker, and the management-url of "
                f"Secret {secret}")
    if isinstance(exc, BrokerAuthError):
        return (f"the broker refuses the admin username and password of Secret {secret} ({exc}): fix them in that "
                "Secret")
    if isinstance(exc, BrokerConflict):
        return f"the broker refused a change ({exc})"
    return str(exc)


def api_message(exc: ApiException) -> str:
    """What the API server said when it refused a write (its Status message), at most 1000 characters."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)[:1000]
    except ValueError:
        return str(exc.reason)


def describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{exc.__class__.__name__}: {str(exc)[:300]}"

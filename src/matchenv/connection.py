"""A broker connection as the operator and the tools read it: the admin Secret's keys (``url``, ``management-url``,
``username``, ``password``), decoded, and the AMQP URL a user's credentials and vhost make of it. Below the operator,
``matchenv dlq`` and the backfill alike; nothing here makes a call."""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from matchenv.contracts import BROKER_ADMIN_KEYS, URL_SEPARATOR, split_urls


class SecretDecodeError(ValueError):
    """A Secret value that is not base64 of UTF-8 text; the message names the key, never the value."""


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's ``data`` as text."""
    decoded: dict[str, str] = {}
    for key, value in (data or {}).items():
        try:
            decoded[key] = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise SecretDecodeError(f"key {key} is not UTF-8 text") from exc
    return decoded


class BrokerConfigError(Exception):
    """The broker Secret is missing or lacks a key; the message names which."""


@dataclass(frozen=True)
class BrokerConnection:
    """An admin connection to one broker. ``url`` is the AMQP URL as the workers reach it; ``url`` and
    ``management_url`` may each list a cluster's nodes (``;``-separated)."""

    url: str
    management_url: str
    username: str
    password: str = field(repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """One broker *and* one set of credentials: a Secret with a wrong password never shares a client, a
        snapshot or an error with the right one."""
        return (self.management_url, self.username, hashlib.sha256(self.password.encode()).hexdigest()[:16])

    @classmethod
    def from_secret_data(cls, data: dict[str, str], where: str) -> BrokerConnection:
        missing = [k for k in BROKER_ADMIN_KEYS if not data.get(k)]
        if missing:
            raise BrokerConfigError(f"broker Secret {where} lacks key(s) {', '.join(missing)}")
        return cls(data["url"], data["management-url"], data["username"], data["password"])


def read_connection(secret: dict[str, Any] | None, namespace: str, name: str) -> BrokerConnection:
    """The connection a broker Secret holds (``secret`` as read from the API, ``None`` if missing)."""
    if secret is None:
        raise BrokerConfigError(f"broker Secret {namespace}/{name} not found")
    try:
        data = decode_secret_data(secret.get("data"))
    except SecretDecodeError as exc:
        raise BrokerConfigError(f"broker Secret {namespace}/{name}: {exc}") from exc
    return BrokerConnection.from_secret_data(data, f"{namespace}/{name}")


@functools.lru_cache(maxsize=1024)  # the operator asks for the same few at every converge of every environment
def worker_amqp_url(broker_url: str, username: str, password: str, vhost: str) -> str:
    """The broker URL the workers reach, with the environment user's credentials and the vhost in the path; for a
    list of nodes (``;``-separated), each of them so, in the same order."""
    return URL_SEPARATOR.join(_with_credentials(url, username, password, vhost) for url in split_urls(broker_url))


def _with_credentials(broker_url: str, username: str, password: str, vhost: str) -> str:
    parts = urlsplit(broker_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme or "amqp", netloc, "/" + quote(vhost, safe=""), parts.query, ""))

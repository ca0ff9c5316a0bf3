"""Messages no producer of ours would send, as other clients can: hypothesis strategies for bodies and AMQP
headers of every field type, and the two ways they reach the fanout (py-amqp, which writes floats, and raw pika).

Each message knows what the workers must make of it: a valid match is stored (once), anything else lands in the
dead-letter queue with a reason. The integration tier drives the strategies; the e2e tier publishes a seeded
corpus drawn from the same strategies (:func:`corpus`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import amqp
import amqp.exceptions
import pika
import pika.exceptions
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from matchenv.contracts import TASK_NAME

STORED = "stored"
TWO_MIB = 2 * 1024 * 1024

_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12).map(lambda k: f"x-fuzz-{k}")
_when = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1)).map(
    lambda d: d.replace(microsecond=0))
_decimals = st.decimals(min_value=-99999, max_value=99999, places=3, allow_nan=False, allow_infinity=False)
_common = [st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), _decimals, _when, st.text(max_size=40)]
# py-amqp also writes floats ('d'), finite ones only: RabbitMQ refuses a frame carrying inf or NaN with 541
# INTERNAL_ERROR and closes the publisher's connection (checked on 3.10), so no producer can send one;
# pika writes bytes as a byte array ('x')
PYAMQP_VALUES = st.recursive(st.one_of(*_common, st.floats(allow_nan=False, allow_infinity=False),
                                       st.binary(max_size=20)),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
                             max_leaves=8)
PIKA_VALUES = st.recursive(st.one_of(*_common, st.binary(max_size=20)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
                           max_leaves=8)


@dataclass
class FuzzMessage:
    """One message and what the workers must make of it: ``STORED`` or the dead-letter reason."""

    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    expect: str
    match_id: str | None = None
    client: str = "py-amqp"
    note: str = field(default="", compare=False)


def match(match_id: str) -> dict[str, Any]:
    return {"home_team": "Fuzz FC", "away_team": "Edge United", "match_date": "2025-10-13", "season": "2024-25",
            "age_group": "U14", "match_type": "League", "home_score": 1, "away_score": 0,
            "external_match_id": match_id}


def protocol1(args: list[Any], task: str = TASK_NAME) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "task": task, "args": args, "kwargs": {}, "retries": 0,
                       "eta": None, "expires": None}).encode()


@st.composite
def messages(draw: st.DrawFn, prefix: str = "fuzz", top_level_decimals: bool = True) -> FuzzMessage:
    """A valid match with odd headers, or a message that is not one (with odd headers too). Without
    ``top_level_decimals``: no header whose own value is a decimal (RabbitMQ 3.10 closes the publisher's connection
    for one while a stream, such as the feed's archive, is bound to the exchange)."""
    client = draw(st.sampled_from(["py-amqp", "pika"]))
    values = PYAMQP_VALUES if client == "py-amqp" else PIKA_VALUES
    if not top_level_decimals:
        values = values.filter(lambda v: not isinstance(v, decimal.Decimal))
    headers = draw(st.dictionaries(_keys, values, max_size=4))
    kind = draw(st.sampled_from(["valid", "valid", "not-json", "not-utf8", "empty", "json-not-task",
                                 "unknown-task", "invalid-match", "wrong-args", "pickle"]))
    match_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    if kind == "valid":
        return FuzzMessage(protocol1([match(match_id)]), headers, "application/json", STORED, match_id, client)
    body, content_type, expect = {
        "not-json": (draw(st.text(min_size=1, max_size=60)).encode() + b"{", "application/json", "malformed"),
        "not-utf8": (b"\xff\xfe" + draw(st.binary(max_size=60)), "application/json", "malformed"),
        "empty": (b"", draw(st.sampled_from(["application/json", "text/plain"])), "malformed"),
        "json-not-task": (json.dumps(draw(st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))).encode(),
                          "application/json", "malformed"),
        "unknown-task": (protocol1([match(match_id)], task="someone.elses.task"), "application/json",
                         "unknown-task"),
        "invalid-match": (protocol1([{**match(match_id), "home_score": -1}]), "application/json", "invalid"),
        "wrong-args": (protocol1([1, 2, 3]), "application/json", "invalid"),
        "pickle": (b"\x80\x04K\x01.", "application/x-python-serialize", "malformed"),
    }[kind]
    return FuzzMessage(body, headers, content_type, expect, None, client, kind)


def oversize(prefix: str = "fuzz") -> FuzzMessage:
    """A 2 MiB body that is no JSON at all."""
    return FuzzMessage(b"x" * TWO_MIB, {"x-fuzz-size": 1.5}, "application/json", "malformed", None, "py-amqp",
                       "2 MiB")


def corpus(count: int, prefix: str = "fuzz", top_level_decimals: bool = True) -> list[FuzzMessage]:
    """Up to ``count`` messages drawn from :func:`messages` (and one 2 MiB body), derandomized: the same kinds and
    headers on every run (match ids aside)."""
    found = [oversize(prefix)]

    @settings(max_examples=count - 1, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(messages(prefix, top_level_decimals))
    def collect(message: FuzzMessage) -> None:
        found.append(message)

    collect()
    return found[:count]


@dataclass
class Published:
    """What the broker took (confirmed), and what it refused, with its words: the publisher is told either way."""

    accepted: list[FuzzMessage] = field(default_factory=list)
    refused: list[tuple[FuzzMessage, str]] = field(default_factory=list)


def publish(url: str, exchange: str, items: Iterable[FuzzMessage]) -> Published:
    """Publish each message with the client it names (py-amqp or pika), persistent, confirmed one by one. A message
    the broker refuses (RabbitMQ closes the connection: e.g. INTERNAL_ERROR for headers a bound stream cannot
    take) is recorded with the broker's reply, and publishing goes on over a new connection."""
    params = pika.URLParameters(url)
    result = Published()
    pika_conn: pika.BlockingConnection | None = None
    amqp_conn: amqp.Connection | None = None
    try:
        for m in items:
            try:
                if m.client == "pika":
                    if pika_conn is None or not pika_conn.is_open:
                        pika_conn = pika.BlockingConnection(params)
                        channel = pika_conn.channel()
                        channel.confirm_delivery()
                    channel.basic_publish(exchange, "", m.body, pika.BasicProperties(
                        content_type=m.content_type, delivery_mode=2, headers=m.headers or None))
                else:
                    if amqp_conn is None or not amqp_conn.connected:
                        amqp_conn = amqp.Connection(
                            host=f"{params.host}:{params.port}", userid=params.credentials.username,
                            password=params.credentials.password, virtual_host=params.virtual_host,
                            confirm_publish=True, connect_timeout=10)
                        amqp_conn.connect()
                        amqp_channel = amqp_conn.channel()
                    properties: dict[str, Any] = {"delivery_mode": 2, "application_headers": m.headers}
                    if m.content_type:
                        properties["content_type"] = m.content_type
                    amqp_channel.basic_publish(amqp.Message(m.body, **properties), exchange=exchange,
                                               routing_key="")
            except (pika.exceptions.AMQPError, amqp.exceptions.AMQPError, OSError) as exc:
                result.refused.append((m, f"{type(exc).__name__}: {exc}"))
                if m.client == "pika":
                    pika_conn = None
                else:
                    with contextlib.suppress(Exception):
                        assert amqp_conn is not None
                        amqp_conn.collect()
                    amqp_conn = None
                continue
            result.accepted.append(m)
    finally:
        for close in (pika_conn.close if pika_conn is not None and pika_conn.is_open else None,
                      amqp_conn.close if amqp_conn is not None and amqp_conn.connected else None):
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
    return result


def expected(items: Iterable[FuzzMessage]) -> tuple[set[str], dict[str, int]]:
    """The match ids that must be stored, and how many dead letters of each reason."""
    stored: set[str] = set()
    reasons: dict[str, int] = {}
    for m in items:
        if m.expect == STORED:
            assert m.match_id
            stored.add(m.match_id)
        else:
            reasons[m.expect] = reasons.get(m.expect, 0) + 1
    return stored, reasons



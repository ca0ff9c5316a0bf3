"""The management client and the planner against a real RabbitMQ: idempotent converge, routing, least privilege,
typed errors."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from matchenv.api import MatchEnvironmentSpec
from matchenv.naming import length_cap_policy_name
from matchenv.topology.applier import ApplyError, apply_plan
from matchenv.topology.client import (
    BrokerAuthError,
    BrokerConflict,
    BrokerNotFound,
    BrokerUnreachable,
    ManagementClient,
)
from matchenv.topology.desired import DesiredTopology, desired_archive, desired_topology
from matchenv.topology.planner import Plan, plan_archive, plan_converge, plan_detach, plan_length_cap, plan_remove
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.cases import CLUSTER, environment


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def make(name: str, namespace: str = "itest", **spec: Any) -> DesiredTopology:
    spec_ = MatchEnvironmentSpec.model_validate(environment(name, **spec)["spec"])
    return desired_topology(CLUSTER, namespace, name, spec_)


def teardown(broker: ManagementClient, want: DesiredTopology, delete_queue: bool) -> None:
    """A deletion's broker steps, as the reconciler runs them (with the workers stopped in between)."""
    apply_plan(broker, plan_detach(want, broker.snapshot()))
    apply_plan(broker, plan_remove(want, broker.snapshot(), delete_queue=delete_queue))


@pytest.fixture
def cleanup(broker: ManagementClient) -> Iterator[list[DesiredTopology]]:
    made: list[DesiredTopology] = []
    yield made
    for want in made:
        teardown(broker, want, True)


def test_converge_is_idempotent_against_the_real_broker(broker: ManagementClient, unique: str,
                                                        cleanup: list[DesiredTopology]) -> None:
    want = make(f"env-{unique}", queue={"maxLength": 100, "messageTTLSeconds": 30})
    cleanup.append(want)
    first = plan_converge(want, broker.snapshot(), "pw-1")
    assert len(first.actions) >= 8
    apply_plan(broker, first)
    assert plan_converge(want, broker.snapshot(), "pw-1") == Plan()
    wait_for(lambda: broker.get_queue("/", want.queue.name).policy == want.names.policy, what="policy applied")


def test_one_publish_reaches_every_bound_queue(rabbitmq: RabbitMQNode, broker: ManagementClient, unique: str,
                                               cleanup: list[DesiredTopology]) -> None:
    exchange = f"fan-{unique}"
    envs = [make(f"{n}-{unique}", exchange={"name": exchange}) for n in ("prod", "dev", "staging")]
    cleanup.extend(envs)
    for want in envs:
        apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, "", b'{"hello": 1}', pika.BasicProperties(delivery_mode=2), mandatory=True)
    for want in envs:
        wait_for(lambda w=want: broker.get_queue("/", w.queue.name).messages == 1, what=f"{want.queue.name} == 1")
    broker.delete_exchange("/", exchange)


def test_environment_user_can_use_only_its_own_queue(rabbitmq: RabbitMQNode, broker: ManagementClient, unique: str,
                                                     cleanup: list[DesiredTopology]) -> None:
    prod, dev = make(f"prod-{unique}"), make(f"dev-{unique}")
    cleanup.extend([prod, dev])
    for want in (prod, dev):
        apply_plan(broker, plan_converge(want, broker.snapshot(), f"pw-{want.names.name}"))
    url = f"amqp://{dev.names.broker_user}:pw-{dev.names.name}@127.0.0.1:{rabbitmq.endpoints.amqp_port}/%2F"

    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        # its own queue: declare with the operator's arguments, consume
        channel.queue_declare(dev.queue.name, durable=True, arguments=dev.queue.arguments)
        channel.basic_consume(dev.queue.name, lambda *a: None)
        # and publish a rejected message's reason to its own dead-letter exchange
        channel.basic_publish(dev.names.dead_letter_exchange, "", b"bad")

    for forbidden in (
        lambda ch: ch.basic_consume(prod.queue.name, lambda *a: None),
        lambda ch: ch.basic_publish("", dev.queue.name, b"x") or ch.basic_qos(prefetch_count=1),
        lambda ch: ch.basic_publish(prod.exchange, "", b"x") or ch.basic_qos(prefetch_count=1),
        lambda ch: ch.queue_declare(f"other-{unique}"),
        # another environment's derived exchange: neither deleted, re-declared, nor read through a binding
        lambda ch: ch.exchange_delete(prod.names.dead_letter_exchange),
        lambda ch: ch.exchange_declare(prod.names.dead_letter_exchange, "fanout", durable=True),
        lambda ch: ch.queue_bind(dev.queue.name, prod.names.dead_letter_exchange),
    ):
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            channel = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                forbidden(channel)
            assert info.value.reply_code == 403  # ACCESS_REFUSED
    # prod's dead-letter exchange is still prod's
    assert ("/", prod.names.dead_letter_exchange) in broker.snapshot().exchanges


def test_retain_teardown_keeps_messages_delete_removes_queue(rabbitmq: RabbitMQNode, broker: ManagementClient,
                                                             unique: str) -> None:
    want = make(f"gone-{unique}")
    apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        conn.channel().basic_publish("", want.queue.name, b"kept", pika.BasicProperties(delivery_mode=2))
    teardown(broker, want, False)
    snapshot = broker.snapshot()
    assert snapshot.bindings_to("/", want.queue.name) == []
    assert want.names.broker_user not in snapshot.users
    wait_for(lambda: broker.get_queue("/", want.queue.name).messages == 1, what="retained message")
    teardown(broker, want, True)
    assert ("/", want.queue.name) not in broker.snapshot().queues


def test_policy_change_applies_to_the_live_queue(rabbitmq: RabbitMQNode, broker: ManagementClient, unique: str,
                                                 cleanup: list[DesiredTopology]) -> None:
    want = make(f"len-{unique}", queue={"maxLength": 5})
    cleanup.append(want)
    apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        for i in range(8):
            channel.basic_publish("", want.queue.name, str(i).encode())
    wait_for(lambda: broker.get_queue("/", want.queue.name).messages == 5, what="max-length 5")
    bigger = make(f"len-{unique}", queue={"maxLength": 50})
    plan = plan_converge(bigger, broker.snapshot(), "pw")
    definition = {"max-length": 50, "dead-letter-exchange": want.names.dead_letter_exchange}
    assert [a.describe() for a in plan.actions] == [f"set policy {want.names.policy} {definition}"]
    apply_plan(broker, plan)
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        for i in range(10):
            channel.basic_publish("", want.queue.name, str(i).encode())
    wait_for(lambda: broker.get_queue("/", want.queue.name).messages == 15, what="max-length 50")
    # the overflow of the first round went to the dead-letter queue, not nowhere
    wait_for(lambda: broker.get_queue("/", want.names.dead_letter_queue).messages == 3, what="3 dead-lettered")


def test_vhost_names_are_url_encoded(broker: ManagementClient, unique: str) -> None:
    vhost = f"team a/{unique}"
    broker.put_vhost(vhost)
    try:
        want = make(f"vh-{unique}", broker={"vhost": vhost})
        apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
        assert broker.get_queue(vhost, want.queue.name).vhost == vhost
        assert plan_converge(want, broker.snapshot(), "pw") == Plan()
    finally:
        broker.delete_vhost(vhost)


def test_missing_vhost_is_a_clear_error(broker: ManagementClient, unique: str) -> None:
    want = make(f"novh-{unique}", broker={"vhost": f"missing-{unique}"})
    with pytest.raises(ApplyError) as info:
        apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    assert isinstance(info.value.cause, BrokerNotFound)
    assert info.value.failed.startswith("declared fanout exchange matches-fanout")
    assert "404" in str(info.value)


def test_redeclare_with_other_type_is_a_conflict(broker: ManagementClient, unique: str) -> None:
    name = f"typed-{unique}"
    broker.declare_queue("/", name, {"x-queue-type": "classic"})
    try:
        with pytest.raises(BrokerConflict, match="inequivalent arg 'x-queue-type'"):
            broker.declare_queue("/", name, {"x-queue-type": "quorum"})
    finally:
        broker.delete_queue("/", name)


def test_wrong_password_is_an_auth_error(rabbitmq: RabbitMQNode) -> None:
    client = ManagementClient(rabbitmq.endpoints.management_url, rabbitmq.endpoints.username, "wrong")
    with pytest.raises(BrokerAuthError, match="401"):
        client.overview()


def test_nothing_listening_is_unreachable() -> None:
    from matchenv_devkit.services.process import free_port

    client = ManagementClient(f"http://127.0.0.1:{free_port()}", "u", "p", timeout=(1, 1))
    with pytest.raises(BrokerUnreachable, match="broker unreachable"):
        client.snapshot()


def test_snapshot_costs_two_calls_whatever_the_number_of_queues(broker: ManagementClient, unique: str,
                                                                cleanup: list[DesiredTopology]) -> None:
    broker.server_version()  # read once per client
    before = broker.calls
    broker.snapshot()
    assert broker.calls - before == 2  # the definitions, and the queues with their counts
    for i in range(5):
        want = make(f"n{i}-{unique}")
        cleanup.append(want)
        apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    before = broker.calls
    broker.snapshot()
    assert broker.calls - before == 2


def test_routing_keys_on_the_fanout_take_a_subset_through_its_topic_exchange(
        rabbitmq: RabbitMQNode, broker: ManagementClient, unique: str, cleanup: list[DesiredTopology]) -> None:
    exchange = f"fan-{unique}"
    everything = make(f"all-{unique}", exchange={"name": exchange})
    u14 = make(f"u14-{unique}", exchange={"name": exchange}, queue={"routingKeys": ["U14.#"]})
    cleanup.extend([everything, u14])
    for want in (everything, u14):
        apply_plan(broker, plan_converge(want, broker.snapshot(want.scope()), "pw"))
        assert plan_converge(want, broker.snapshot(want.scope()), "pw") == Plan()  # the scoped read sees it all
    keys = ["U13.homegrown.northeast", "U14.homegrown.northeast", "U14.academy.west", "U15.homegrown.northeast",
            ""]  # the last: a producer that sends no key
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for key in keys:
            channel.basic_publish(exchange, key, b"{}", pika.BasicProperties(delivery_mode=2))
    wait_for(lambda: broker.get_queue("/", everything.queue.name).messages == 5, what="all five to the fanout queue")
    wait_for(lambda: broker.get_queue("/", u14.queue.name).messages == 2, what="the two U14 ones to the subset")
    time.sleep(0.5)
    assert broker.get_queue("/", u14.queue.name).messages == 2
    # the exchange-to-exchange binding deleted by hand is seen and put back
    path = f"/api/bindings/%2F/e/{exchange}/e/{exchange}.topic"
    for row in broker._request("GET", path):
        broker._request("DELETE", f"{path}/{row['properties_key']}")
    plan = plan_converge(u14, broker.snapshot(u14.scope()), "pw")
    assert [a.describe() for a in plan.actions] == [f"bound exchange {exchange}.topic to exchange {exchange}"]
    apply_plan(broker, plan)
    broker.delete_exchange("/", f"{exchange}.topic")
    broker.delete_exchange("/", exchange)


def test_a_scoped_snapshot_sees_what_the_full_one_sees_of_an_environment(broker: ManagementClient, unique: str,
                                                                        cleanup: list[DesiredTopology]) -> None:
    want = make(f"s-{unique}")
    cleanup.append(want)
    other = make(f"o-{unique}")
    cleanup.append(other)
    for desired in (want, other):
        apply_plan(broker, plan_converge(desired, broker.snapshot(), "pw"))
    broker.declare_exchange(want.vhost, f"side-{unique}", "direct")
    broker.bind_queue(want.vhost, f"side-{unique}", want.queue.name, "k")  # someone else's binding to our queue
    try:
        full, scoped = broker.snapshot(), broker.snapshot(want.scope())
        mine = {(want.vhost, n) for n in want.scope().queues}
        assert set(scoped.queues) == mine
        assert {k: (q.type, q.owner) for k, q in scoped.queues.items()} == \
            {k: (full.queues[k].type, full.queues[k].owner) for k in mine}
        for queue in want.scope().queues:
            assert set(scoped.bindings_to(want.vhost, queue)) == set(full.bindings_to(want.vhost, queue))
        assert scoped.exchanges[(want.vhost, want.names.dead_letter_exchange)] == \
            full.exchanges[(want.vhost, want.names.dead_letter_exchange)]
        assert scoped.policies == {k: p for k, p in full.policies.items() if k == (want.vhost, want.names.policy)}
        assert scoped.users == {want.names.broker_user: full.users[want.names.broker_user]}
        # its queues carry the ownership marker: only its own user's permissions are read, not the vhost's
        assert scoped.permissions == {k: p for k, p in full.permissions.items()
                                      if k == (want.names.broker_user, want.vhost)}
        assert plan_converge(want, scoped, "pw").actions == plan_converge(want, full, "pw").actions
    finally:
        broker.delete_exchange(want.vhost, f"side-{unique}")


def test_a_scoped_snapshot_of_a_queue_without_a_marker_reads_its_claimants(broker: ManagementClient,
                                                                           unique: str) -> None:
    want = make(f"u-{unique}")
    broker.declare_queue(want.vhost, want.queue.name, {})  # declared by hand, or by an older version: no marker
    try:
        full, scoped = broker.snapshot(), broker.snapshot(want.scope())
        assert set(scoped.queues) == {(want.vhost, want.queue.name)}
        assert not scoped.queues[(want.vhost, want.queue.name)].claimed_by_cluster
        # whoever may read it is its claimant: every permission of the vhost is read, none of the others'
        assert scoped.permissions == {k: p for k, p in full.permissions.items() if k[1] == want.vhost}
        assert set(scoped.bindings_to(want.vhost, want.queue.name)) == \
            set(full.bindings_to(want.vhost, want.queue.name))
        assert plan_converge(want, scoped, "pw").refusal == plan_converge(want, full, "pw").refusal
    finally:
        broker.delete_queue(want.vhost, want.queue.name)


def test_a_foreign_binding_with_arguments_is_removed_from_an_owned_queue(broker: ManagementClient, unique: str,
                                                                          cleanup: list[DesiredTopology]) -> None:
    want = make(f"a-{unique}")
    cleanup.append(want)
    apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    side = f"hdr-{unique}"
    broker.declare_exchange(want.vhost, side, "headers")
    try:
        broker._request("POST", f"/api/bindings/%2F/e/{side}/q/{want.queue.name}",
                        {"routing_key": "", "arguments": {"x-match": "all", "team": "a"}})
        snapshot = broker.snapshot()  # from the definitions: no properties_key for a binding with arguments
        assert [b.properties_key for b in snapshot.bindings_to(want.vhost, want.queue.name) if b.source == side] == [""]
        apply_plan(broker, plan_converge(want, snapshot, "pw"))
        assert [b.source for b in broker.snapshot().bindings_to(want.vhost, want.queue.name)] == [want.exchange]
    finally:
        broker.delete_exchange(want.vhost, side)


class _Misbehaving:
    """A local HTTP server on loopback that answers like a broken management endpoint."""

    def __init__(self, mode: str) -> None:
        import http.server
        import threading

        mode_ = mode

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if mode_ == "html":
                    body = b"<html>login</html>"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif mode_ == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(1000):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.05)
                elif mode_ == "trickle-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for i in range(1000):
                        self.wfile.write(f"X-Slow-{i}: x\r\n".encode())
                        self.wfile.flush()
                        time.sleep(0.05)
                elif mode_ == "echo-401":
                    body = ('{"error": "not_authorised", "reason": "Login failed for ' + "x" * 5000
                            + ' secret-pw"}').encode()
                    self.send_response(401)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def do_PUT(self) -> None:
                self.do_GET()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_non_json_answer_is_an_error_not_a_crash() -> None:
    server = _Misbehaving("html")
    try:
        with pytest.raises(BrokerUnreachable, match="not JSON"):
            ManagementClient(server.url, "u", "p").snapshot()
    finally:
        server.close()


def test_a_trickling_answer_is_cut_at_the_total_deadline() -> None:
    server = _Misbehaving("trickle")  # 1,000 bytes at 20 bytes/s: 50 s, each read well within its timeout
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable, match="no complete answer within 2s"):
            ManagementClient(server.url, "u", "p", timeout=(1, 2)).list_queues()
        assert time.monotonic() - started < 5
    finally:
        server.close()


def test_a_write_never_outlasts_what_is_left_of_the_leaders_lease() -> None:
    """The leader's Lease has 1 s left: a write's deadline is cut to it (none still under way once a standby may
    lead), a read keeps its own timeout."""
    server = _Misbehaving("trickle")
    try:
        client = ManagementClient(server.url, "u", "p", timeout=(1, 4), write_budget=lambda: 1.0)
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable, match=r"PUT .* no complete answer within 1s"):
            client.put_user("someone", "pw")
        assert time.monotonic() - started < 2.5
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable, match="no complete answer within 4s"):
            client.list_queues()
        assert time.monotonic() - started >= 3.5
    finally:
        server.close()


def test_trickling_headers_are_cut_at_the_total_deadline_too() -> None:
    server = _Misbehaving("trickle-headers")  # each header line well within the read timeout
    try:
        client = ManagementClient(server.url, "u", "p", timeout=(1, 2))
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable, match="no complete answer within 2s"):
            client.list_queues()
        assert time.monotonic() - started < 4
    finally:
        server.close()


def test_error_bodies_are_cut_and_never_echo_the_password() -> None:
    server = _Misbehaving("echo-401")
    try:
        with pytest.raises(BrokerAuthError) as info:
            ManagementClient(server.url, "u", "secret-pw").overview()
        assert "secret-pw" not in str(info.value)
        assert len(str(info.value)) < 400
    finally:
        server.close()


def test_user_password_is_checked_against_the_brokers_hash(broker: ManagementClient, unique: str) -> None:
    user = f"hash-{unique}"
    broker.put_user(user, "right-password")
    try:
        live = broker.snapshot().users[user]
        assert live.has_password("right-password") is True
        assert live.has_password("wrong-password") is False
    finally:
        broker.delete_user(user)


def test_queue_and_dead_letter_exchange_carry_the_owner_marker(broker: ManagementClient, unique: str,
                                                                cleanup: list[DesiredTopology]) -> None:
    want = make(f"own-{unique}", namespace="team-a", queue={"type": "quorum"})
    cleanup.append(want)
    apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    snapshot = broker.snapshot()
    marker = f"{CLUSTER}/team-a/own-{unique}"
    assert snapshot.queues[("/", want.queue.name)].owner == marker
    assert snapshot.queues[("/", want.names.dead_letter_queue)].owner == marker
    assert snapshot.exchanges[("/", want.names.dead_letter_exchange)].owner == marker
    # the worker re-declares its queue with the same arguments (the contract): accepted, marker kept; RabbitMQ
    # compares only its own arguments, so a queue of an older marker (or none) takes the declaration too
    broker.declare_queue("/", want.queue.name, want.queue.arguments)
    broker.declare_queue("/", want.queue.name, {**want.queue.arguments, "x-matchenv-owner": "team-a/legacy"})
    assert broker.get_queue("/", want.queue.name).owner == marker
    other = make(f"own-{unique}", namespace="team-b", queue={"type": "quorum", "name": want.queue.name})
    refused = plan_converge(other, broker.snapshot(), "pw")
    assert refused.refusal is not None
    assert refused.refusal.reason == "QueueClaimed"


def test_the_archive_keeps_every_match_once_and_lets_go_of_those_older_than_its_age(
        rabbitmq: RabbitMQNode, broker: ManagementClient, unique: str) -> None:
    exchange = f"fan-{unique}"
    broker.declare_exchange("/", exchange, "fanout")
    # a short age and small segments: retention drops whole segments, when a new one begins
    archive = desired_archive("/", exchange, "fanout", "3s", 10_000_000, 4_000)
    plan = plan_archive(archive, broker.snapshot(archive.scope()))
    apply_plan(broker, plan)
    assert plan_archive(archive, broker.snapshot(archive.scope())) == Plan()
    assert broker.get_queue("/", archive.name).type == "stream"
    wait_for(lambda: broker._request("GET", f"/api/queues/%2F/{archive.name}").get("effective_policy_definition")
             == {"max-age": "3s", "max-length-bytes": 10_000_000}, what="the retention policy on the stream")

    def publish(first: int, count: int) -> None:
        with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            for i in range(first, first + count):
                channel.basic_publish(exchange, "", json.dumps({"i": i, "pad": "x" * 300}).encode(),
                                      pika.BasicProperties(delivery_mode=2))

    def archived() -> list[int]:
        with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
            channel = conn.channel()
            channel.basic_qos(prefetch_count=100)
            seen = []
            for method, _props, body in channel.consume(archive.name, arguments={"x-stream-offset": "first"},
                                                        inactivity_timeout=1.0):
                if method is None:
                    break
                seen.append(json.loads(body)["i"])
                channel.basic_ack(method.delivery_tag)
            return seen

    try:
        publish(0, 40)
        assert archived() == list(range(40))  # each once, in order, whoever consumed before
        # retention runs when a segment is full and drops whole segments older than max-age: the segment that
        # was being written when the age passed goes at the next round
        for first in (40, 80):
            time.sleep(4)  # what is archived is older than max-age now
            publish(first, 40)
        kept = wait_for(lambda: (seen := archived()) and seen[0] >= 40 and seen, timeout=20,
                        what="the matches older than max-age gone from the archive")
        assert kept == list(range(kept[0], 120))
    finally:
        broker.delete_queue("/", archive.name)
        broker.delete_policy("/", archive.policy)
        broker.delete_exchange("/", exchange)


def test_the_administrators_maximum_length_bounds_queues_without_a_policy_and_lowers_larger_ones(
        rabbitmq: RabbitMQNode, broker: ManagementClient, unique: str, cleanup: list[DesiredTopology]) -> None:
    """One operator policy: a paused environment's queue without maxLength is bounded, and the lower of the two
    limits wins where the environment has its own."""
    plain, own = make(f"cap-{unique}"), make(f"capown-{unique}", queue={"maxLength": 50})
    cleanup.extend([plain, own])
    for want in (plain, own):
        apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    pattern, cap = rf"^matches\.cap(own)?-{unique}$", length_cap_policy_name(CLUSTER)
    apply_plan(broker, Plan(plan_length_cap("/", cap, pattern, 6, broker.get_operator_policy("/", cap))))
    assert plan_length_cap("/", cap, pattern, 6, broker.get_operator_policy("/", cap)) == ()
    try:
        with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
            channel = conn.channel()
            for want in (plain, own):
                for i in range(10):
                    channel.basic_publish("", want.queue.name, str(i).encode())
        for want in (plain, own):
            wait_for(lambda w=want: broker.get_queue("/", w.queue.name).messages == 6, what=f"{want.queue.name} 6")
        # the newest kept (drop-head): the first message left is the fifth published
        with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
            method, _, body = conn.channel().basic_get(plain.queue.name, auto_ack=True)
            assert method is not None
            assert body == b"4"
    finally:
        apply_plan(broker, Plan(plan_length_cap("/", cap, pattern, 0, broker.get_operator_policy("/", cap))))
    assert broker.get_operator_policy("/", cap) is None


def test_a_quorum_queue_without_a_dlq_has_no_delivery_limit_on_either_rabbitmq(
        rabbitmq: RabbitMQNode, broker: ManagementClient, unique: str, cleanup: list[DesiredTopology]) -> None:
    """RabbitMQ 4 drops a quorum queue's message after 20 deliveries unless told otherwise; 3.x never does (and
    refuses -1). Whichever runs, a message redelivered 25 times is still there."""
    want = make(f"q-{unique}", queue={"type": "quorum", "deadLetter": False})
    cleanup.append(want)
    apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    assert plan_converge(want, broker.snapshot(), "pw") == Plan()
    major = int((broker.server_version() or "0").split(".")[0])
    policy = broker.snapshot().policies.get(("/", want.names.policy))
    assert (policy.definition if policy else {}) == ({"delivery-limit": -1} if major >= 4 else {})
    wait_for(lambda: broker.get_queue("/", want.queue.name).policy == (want.names.policy if major >= 4 else None),
             what="the policy applied")
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        conn.channel().basic_publish("", want.queue.name, b"keeps failing", pika.BasicProperties(delivery_mode=2))
        for _ in range(25):  # as a worker that dies holding it: delivered, its channel gone before any ack
            channel = conn.channel()
            wait_for(lambda c=channel: c.basic_get(want.queue.name)[0], timeout=10,  # type: ignore[misc]
                     what="the message delivered")
            channel.close()
        last = conn.channel()
        assert wait_for(lambda: last.basic_get(want.queue.name, auto_ack=True)[2], timeout=10,
                        what="the message after 25 failed deliveries") == b"keeps failing"

"""The management client and the planner against a real RabbitMQ: idempotent converge, routing, least privilege,
typed errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from matchenv.devservices.process import wait_for
from matchenv.devservices.rabbitmq import RabbitMQNode
from matchenv.models import MatchEnvironmentSpec
from matchenv.topology.applier import ApplyError, apply_plan
from matchenv.topology.client import (
    BrokerAuthError,
    BrokerConflict,
    BrokerNotFound,
    BrokerUnreachable,
    ManagementClient,
)
from matchenv.topology.desired import DesiredTopology, desired_topology
from matchenv.topology.planner import Plan, plan_converge, plan_teardown
from tests.cases import environment


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def make(name: str, namespace: str = "itest", **spec: Any) -> DesiredTopology:
    return desired_topology(namespace, name, MatchEnvironmentSpec.model_validate(environment(name, **spec)["spec"]))


@pytest.fixture
def cleanup(broker: ManagementClient) -> Iterator[list[DesiredTopology]]:
    made: list[DesiredTopology] = []
    yield made
    for want in made:
        apply_plan(broker, plan_teardown(want, broker.snapshot(), delete_queue=True))


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
    ):
        with pika.BlockingConnection(pika.URLParameters(url)) as conn:
            channel = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                forbidden(channel)
            assert info.value.reply_code == 403  # ACCESS_REFUSED


def test_retain_teardown_keeps_messages_delete_removes_queue(rabbitmq: RabbitMQNode, broker: ManagementClient,
                                                             unique: str) -> None:
    want = make(f"gone-{unique}")
    apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        conn.channel().basic_publish("", want.queue.name, b"kept", pika.BasicProperties(delivery_mode=2))
    apply_plan(broker, plan_teardown(want, broker.snapshot(), delete_queue=False))
    snapshot = broker.snapshot()
    assert snapshot.bindings_to("/", want.queue.name) == []
    assert want.names.broker_user not in snapshot.users
    wait_for(lambda: broker.get_queue("/", want.queue.name).messages == 1, what="retained message")
    apply_plan(broker, plan_teardown(want, broker.snapshot(), delete_queue=True))
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
    from matchenv.devservices.process import free_port

    client = ManagementClient(f"http://127.0.0.1:{free_port()}", "u", "p", timeout=(1, 1))
    with pytest.raises(BrokerUnreachable, match="broker unreachable"):
        client.snapshot()


def test_snapshot_costs_six_calls_whatever_the_number_of_queues(broker: ManagementClient, unique: str,
                                                                cleanup: list[DesiredTopology]) -> None:
    before = broker.calls
    broker.snapshot()
    assert broker.calls - before == 6
    for i in range(5):
        want = make(f"n{i}-{unique}")
        cleanup.append(want)
        apply_plan(broker, plan_converge(want, broker.snapshot(), "pw"))
    before = broker.calls
    broker.snapshot()
    assert broker.calls - before == 6

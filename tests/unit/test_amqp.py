"""The one place AMQP connections are set up: every wait bounded, and a failure to connect that says where and why."""

from __future__ import annotations

import socket

import pytest

from matchenv.amqp import connect, parameters


class Refused(Exception):
    pass


def test_every_wait_of_a_connection_is_bounded() -> None:
    [params] = parameters("amqp://u:p@broker:5672/%2F", 10, blocked=30, heartbeat=30)
    assert (params.socket_timeout, params.stack_timeout, params.blocked_connection_timeout) == (10, 20, 30)
    assert (params.connection_attempts, params.heartbeat) == (1, 30)
    assert parameters("amqp://broker", 5, blocked=15)[0].heartbeat is None  # the broker's


def test_a_cluster_is_its_nodes_in_order_each_bounded_alike() -> None:
    nodes = parameters("amqp://u:p@n1:5672/%2F; amqp://u:p@n2:5673/%2F;", 10, blocked=30)
    assert [(n.host, n.port, n.credentials.username, n.socket_timeout) for n in nodes] == \
        [("n1", 5672, "u", 10), ("n2", 5673, "u", 10)]


def test_no_node_of_a_cluster_answering_names_every_node() -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    urls = ";".join(f"amqp://u:p@127.0.0.1:{port}/%2F" for port in ports)
    with pytest.raises(Refused, match=rf"127\.0\.0\.1:{ports[0]}, 127\.0\.0\.1:{ports[1]}"):
        connect(parameters(urls, 2, blocked=6), Refused, "the test's")


def test_a_broker_that_is_not_there_is_named_in_the_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Refused, match=rf"cannot reach the broker at 127\.0\.0\.1:{port}: AMQPConnectionError"):
        connect(parameters(f"amqp://u:p@127.0.0.1:{port}/%2F", 2, blocked=6), Refused, "the test's")

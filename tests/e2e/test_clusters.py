"""Two clusters on one broker: what each operator makes names its cluster, so cluster B's ``default/prod`` is never
cluster A's. Cluster A upgrades from a version that named nobody's cluster and adopts what that version made.

Cluster A is the session's API server, cluster B one of its own; both have a process node (worker pods as
processes) and share the session's RabbitMQ and PostgreSQL, each environment with a database of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pika.exceptions
import pytest

from matchenv.naming import broker_regex, cluster_id_from_uid
from matchenv.scraper.messages import task_message
from matchenv.scraper.sources import synthetic
from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.stack import LocalStack
from matchenv_devkit.services.postgres import PostgresServer
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import RabbitMQNode
from tests.e2e.harness import secret_value

WAITING = 20  # matches published to A's queue while its operator was being upgraded
TOTAL = 500


@dataclass
class Clusters:
    a: LocalStack
    b: LocalStack

    @staticmethod
    def identity(stack: LocalStack) -> str:
        return cluster_id_from_uid(stack.kubectl.get_json("namespace", "kube-system")["metadata"]["uid"])


def _made_by_the_previous_version(rabbitmq: RabbitMQNode, stack: LocalStack) -> None:
    """What the version before the cluster identity made for default/prod (markers ``default/prod``, user
    ``matchenv.default.prod``), as its operator left it, with matches waiting in the queue."""
    broker = stack.broker
    legacy = {"x-matchenv-owner": "default/prod"}
    broker.declare_exchange("/", "matches-fanout", "fanout")
    # manifests/environments/prod: quorum queues
    broker.declare_queue("/", "matches.prod", {"x-queue-type": "quorum", **legacy})
    broker.declare_queue("/", "matches.prod.dlq", {"x-queue-type": "quorum", **legacy})
    broker.declare_exchange("/", "matches.prod.dlx", "fanout", arguments=legacy)
    broker.bind_queue("/", "matches-fanout", "matches.prod")
    broker.bind_queue("/", "matches.prod.dlx", "matches.prod.dlq")
    broker.put_user("matchenv.default.prod", "previous-password")
    broker.set_permissions("/", "matchenv.default.prod", broker_regex("matches.prod"),
                           broker_regex("matches.prod.dlx"), broker_regex("matches.prod"))
    with pika.BlockingConnection(pika.URLParameters(rabbitmq.endpoints.amqp_url)) as conn:
        channel = conn.channel()
        for raw in synthetic(WAITING, seed=4242):
            message = task_message(raw.data)  # type: ignore[arg-type]
            channel.basic_publish("", "matches.prod", message.body, pika.BasicProperties(
                content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                headers=message.headers))


@pytest.fixture(scope="module")
def clusters(kubectl: Kubectl, rabbitmq: RabbitMQNode, postgres: PostgresServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    tmp = tmp_path_factory.mktemp("clusters")
    second = LocalCluster(tmp / "cluster-b", log=print)
    second.start()
    a = LocalStack(kubectl, rabbitmq, postgres, tmp / "a", label="a")
    b = LocalStack(Kubectl(second), rabbitmq, postgres, tmp / "b", label="b")
    started: list[LocalStack] = []
    try:
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        a.clean_broker()
        _made_by_the_previous_version(rabbitmq, a)
        started.append(a.start(clean_broker=False))
        started.append(b.start(clean_broker=False))
        yield Clusters(a, b)
    finally:
        for stack in reversed(started):
            stack.stop()
        second.stop()


def _reason(stack: LocalStack, name: str) -> str | None:
    status = stack.kubectl.get_json("menv", name).get("status") or {}
    return next((c["reason"] for c in status.get("conditions", []) if c["type"] == "TopologyReady"), None)


def _authenticates(rabbitmq: RabbitMQNode, username: str, password: str, vhost: str = "/") -> bool:
    credentials = pika.PlainCredentials(username, password)
    params = pika.ConnectionParameters("127.0.0.1", rabbitmq.endpoints.amqp_port, vhost, credentials,
                                       connection_attempts=1, socket_timeout=5)
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.ProbableAuthenticationError:
        return False
    return True


def test_the_upgraded_cluster_adopts_what_the_previous_version_made_with_its_messages(clusters: Clusters) -> None:
    a = clusters.a
    me = Clusters.identity(a)
    a.apply("prod")
    a.wait_ready("prod")
    a.wait_rows({"prod": WAITING})
    assert a.duplicates("prod") == 0
    users = {u.name for u in a.broker.list_users()}
    assert f"matchenv-env.{me}.default.prod" in users
    assert "matchenv.default.prod" not in users  # the previous version's user is gone once the new one has rights
    assert secret_value(a.kubectl, "default", "prod-broker", "username") == f"matchenv-env.{me}.default.prod"
    publisher = secret_value(a.kubectl, "matchenv-system", "matchenv-publisher", "username")
    assert publisher == f"matchenv-publisher.{me}.matchenv-system"
    # the queue keeps the marker it was declared with (arguments never change): the claim is the new user's rights
    assert a.broker.get_queue("/", "matches.prod").owner == "default/prod"


def test_the_second_cluster_is_refused_anothers_queue_and_runs_beside_it(clusters: Clusters) -> None:
    a, b = clusters.a, clusters.b
    me, other = Clusters.identity(a), Clusters.identity(b)
    assert me != other
    a_password = secret_value(a.kubectl, "default", "prod-broker", "password")
    a_publisher = secret_value(a.kubectl, "matchenv-system", "matchenv-publisher", "password")
    b.apply("prod")
    wait_for(lambda: _reason(b, "prod") == "QueueClaimed", timeout=60, what="B's default/prod refused")
    described = b.kubectl.run("describe", "menv", "prod").stdout
    assert f"belongs to MatchEnvironment default/prod of cluster {me}" in described
    # its deletion touches nothing of A's; a new one with a queue of its own runs beside A's
    b.kubectl.run("delete", "menv", "prod", "--timeout=60s", timeout=90)
    assert [x.source for x in a.broker.list_bindings() if x.destination == "matches.prod" and x.source] == [
        "matches-fanout"]
    b.apply("prod", queue={"name": "matches.prod-b"})
    b.wait_ready("prod")
    assert b.broker.get_queue("/", "matches.prod-b").owner == f"{other}/default/prod"
    assert secret_value(b.kubectl, "default", "prod-broker", "username") == f"matchenv-env.{other}.default.prod"
    # each operator keeps its own users: neither's resync touched the other's passwords
    a.wait_ready("prod")
    for stack, password, publisher in ((a, a_password, a_publisher), (b, None, None)):
        cluster = Clusters.identity(stack)
        worker = password or secret_value(stack.kubectl, "default", "prod-broker", "password")
        assert _authenticates(a.rabbitmq, f"matchenv-env.{cluster}.default.prod", worker)
        scraper = publisher or secret_value(stack.kubectl, "matchenv-system", "matchenv-publisher", "password")
        assert _authenticates(a.rabbitmq, f"matchenv-publisher.{cluster}.matchenv-system", scraper)

    result = a.scrape("--synthetic", str(TOTAL))
    assert result.returncode == 0, result.stderr
    a.wait_rows({"prod": WAITING + TOTAL}, timeout=240)
    b.wait_rows({"prod": TOTAL}, timeout=240)
    assert a.duplicates("prod") == 0
    assert b.duplicates("prod") == 0
    # still each other's strangers after several resyncs of both
    assert secret_value(a.kubectl, "default", "prod-broker", "password") == a_password
    assert _authenticates(a.rabbitmq, f"matchenv-env.{me}.default.prod", a_password)

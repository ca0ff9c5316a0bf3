"""The resync pass: a stale listing puts nothing back, a slow tenant broker delays only its own environments, idle
broker clients are closed."""

from __future__ import annotations

from typing import Any

from tests.fakes import SimulatedBroker
from tests.unit.world import ADMIN, World


def test_a_pass_that_listed_an_environment_before_its_deletion_puts_nothing_back(world: World) -> None:
    world.add("dev", deletionPolicy="Delete")
    world.converge("dev")
    real_list = world.kube.list_environments

    def listing(namespace: str | None = None) -> list[dict[str, Any]]:
        stale = real_list(namespace)  # read before the delete handler ran
        world.kube.list_environments = real_list  # type: ignore[method-assign]  # the teardown lists too
        world.delete("dev")
        del world.kube.environments[("default", "dev")]
        return stale

    world.kube.list_environments = listing  # type: ignore[method-assign]
    report = world.reconciler.resync_all()
    world.kube.list_environments = real_list  # type: ignore[method-assign]
    assert report.skipped == 1
    assert ("/", "matches.dev") not in world.broker.queues
    assert "matchenv-env.c1.default.dev" not in world.broker.users
    assert not any(b.destination == "matches.dev" for b in world.broker.bindings)
    assert ("default", "dev-workers") not in world.kube.deployments
    assert ("default", "dev-broker") not in world.kube.secrets


def test_a_slow_tenant_broker_delays_only_its_own_environments(world: World) -> None:
    """A tenant's broker that does not answer: each pass still ends within one interval with the operator's own
    broker checked (a binding deleted by hand is back at the next pass), the stalled broker is not asked again
    while its first call is under way, and its environment converges once it answers."""
    import threading
    import time

    class Stalled(SimulatedBroker):
        gate = threading.Event()
        entered = 0

        def snapshot(self, scope: Any = None) -> Any:
            Stalled.entered += 1
            self.gate.wait(30)
            return super().snapshot(scope)

    slow = Stalled()
    world.clients.others["http://slow:15672"] = slow
    world.kube.add_secret("default", "slow-broker", {**ADMIN, "management-url": "http://slow:15672"})
    world.add("tenant", broker={"connectionSecretRef": {"name": "slow-broker"}})
    world.add("prod")
    try:
        started = time.monotonic()
        world.reconciler.resync_all()
        assert time.monotonic() - started < 5  # one interval (1 s), not the tenant's 30
        assert world.status("prod").get("phase") in ("Pending", "Ready")
        [binding] = world.broker.snapshot().bindings_to("/", "matches.prod")
        world.broker.unbind_queue("/", binding.source, "matches.prod", binding.properties_key)
        report = world.reconciler.resync_all()
        assert [b.source for b in world.broker.snapshot().bindings_to("/", "matches.prod")] == ["matches-fanout"]
        assert report.skipped == 1  # the tenant: its broker's first call is still under way
        assert Stalled.entered == 1
    finally:
        Stalled.gate.set()
    for _ in range(100):
        if world.status("tenant").get("conditions"):
            break
        time.sleep(0.05)
    assert world.reason("tenant") == "Converged"


def test_unused_broker_clients_are_closed() -> None:
    from matchenv.connection import BrokerConnection
    from matchenv.operator.brokers import BrokerClients

    now = [0.0]
    clients = BrokerClients(5.0, clock=lambda: now[0])
    old = BrokerConnection("amqp://b", "http://b:15672", "admin", "old-password")
    new = BrokerConnection("amqp://b", "http://b:15672", "admin", "new-password")
    first = clients.get(old)
    now[0] = 100.0
    clients.get(new)
    now[0] = 700.0
    clients.get(new)
    assert clients.evict_idle(600) == 1  # the old password's client: its threads and session closed
    assert clients.get(new) is not first
    assert clients.evict_idle(600) == 0


def test_a_pass_leaves_an_environment_to_its_queued_handler_converge(world: World) -> None:
    """In a burst the handlers' converges wait on the pool: a pass converging the same environments would do each
    one's broker work twice (the handler reads it all again after), so it leaves them until their handler began."""
    world.add("dev")
    uid = world.kube.environments[("default", "dev")]["metadata"]["uid"]
    world.reconciler.will_converge(uid)
    report = world.reconciler.resync_all()
    assert report.skipped == 1
    assert ("/", "matches.dev") not in world.broker.queues
    assert ("default", "dev-broker") not in world.kube.secrets
    world.converge("dev")  # the handler's turn
    assert ("/", "matches.dev") in world.broker.queues
    assert world.reconciler.resync_all().skipped == 0  # from then on the passes check it again


def test_a_pass_counts_its_own_management_calls_not_those_a_handler_makes_meanwhile(world: World) -> None:
    """``matchenv_resync_management_calls`` is the pass's: in a burst the handlers' converges run beside it on the
    same broker clients, and counting the clients' calls over the pass's time made a quiet pass look like 1,800."""
    import threading

    world.add("prod")
    world.converge("prod")
    world.reconciler.resync_all()  # the first pass also does what is done once per process
    quiet = world.reconciler.resync_all().management_calls
    real = world.broker.snapshot

    def snapshot(scope: Any = None) -> Any:
        if scope is None:  # the pass's read: meanwhile dev is applied and a handler converges it on its own thread
            world.broker.snapshot = real  # type: ignore[method-assign]
            world.add("dev")
            handler = threading.Thread(target=world.converge, args=("dev",))
            handler.start()
            handler.join()
        return real(scope)

    world.broker.snapshot = snapshot  # type: ignore[method-assign]
    before = world.broker.calls
    report = world.reconciler.resync_all()
    assert world.broker.calls - before > report.management_calls + 3  # the handler's calls were made meanwhile
    assert report.management_calls == quiet


def test_a_pass_reads_its_brokers_snapshot_while_the_api_server_lists(world: World) -> None:
    """The operator's own broker is known before the lists say who uses it: a pass after one that had environments
    there asks the broker for its snapshot while it lists (at 1,000 environments each of the two took ~0.3-0.6 s
    of a 1.4 s pass, one after the other), and the converges use that one snapshot."""
    import threading

    world.add("prod")
    world.converge("prod")
    world.reconciler.resync_all()  # the first pass: it learns that prod is on the operator's broker
    asked = threading.Event()
    real_snapshot, real_list = world.broker.snapshot, world.kube.list_environments
    full = []

    def snapshot(scope: Any = None) -> Any:
        if scope is None:
            full.append(threading.current_thread().name)
            asked.set()
        return real_snapshot(scope)

    during_list = []

    def listing(namespace: str | None = None) -> list[dict[str, Any]]:
        # without the head start the snapshot waits for this list: five seconds lost, then False
        during_list.append(asked.wait(5))
        return real_list(namespace)

    world.broker.snapshot = snapshot  # type: ignore[method-assign]
    world.kube.list_environments = listing  # type: ignore[method-assign]
    report = world.reconciler.resync_all()
    assert during_list == [True]
    assert report.failures == 0
    assert len(full) == 1  # one snapshot for the pass, read beside the list


def test_a_pass_with_no_environment_asks_the_broker_only_for_the_publisher(world: World) -> None:
    """The head start is for a snapshot the pass will use: with no environment it is the publisher's user's (one
    call), and without that user none at all."""
    world.reconciler.resync_all()
    assert world.reconciler.resync_all().management_calls == 1  # the publisher's user, checked against it
    world.services.settings.publisher_secret = ""
    before = world.broker.calls
    assert world.reconciler.resync_all().management_calls == 0
    assert world.broker.calls == before


def test_a_broker_down_at_the_head_start_is_reported_by_each_environment(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    world.reconciler.resync_all()
    world.broker.down = True
    report = world.reconciler.resync_all()
    assert report.failures == 0  # reported in status, not raised
    assert world.reason("prod") == "BrokerUnreachable"
    assert "simulated broker is down" in world.condition("prod", "TopologyReady")["message"]

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

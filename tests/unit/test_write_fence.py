"""The write fence at the socket: a write that passed its first check and was held up until the Lease ran out is
never sent. A loopback HTTP server records what actually reached it."""

from __future__ import annotations

import asyncio
import re

import kopf
import pytest
from kubernetes import client

from matchenv.operator.kopf_login import fenced_session
from matchenv.operator.kube import Kube
from matchenv.topology.client import ManagementClient
from matchenv.write_fence import NotLeading
from tests.unit.loopback import Recorder


class Lease:
    """A Lease's write budget that runs out when told to: the process stalled between a write's start and its send."""

    def __init__(self) -> None:
        self.left = 8.0

    def __call__(self) -> float:
        return self.left


def kube_for(server: Recorder, lease: Lease) -> Kube:
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    return Kube(client.ApiClient(configuration), timeout=5, fence=lease)


def test_a_status_patch_started_while_leading_is_not_sent_once_the_lease_ran_out(
        server: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    lease = Lease()
    kube = kube_for(server, lease)
    kube.patch_environment_status("default", "prod", {"phase": "Ready"})  # leading: sent
    assert server.seen == ["PATCH /apis/matchenv.io/v1alpha1/namespaces/default/matchenvironments/prod/status"]

    asked = kube.may_write

    def stall_after_the_check(what: str, target: str = "kubernetes") -> float:
        deadline = asked(what, target)  # the write starts with the Lease held...
        lease.left = 0.0  # ...and the process stops until a standby may lead
        return deadline

    monkeypatch.setattr(kube, "may_write", stall_after_the_check)
    with pytest.raises(NotLeading, match=r"refused to send PATCH /apis/matchenv\.io/v1alpha1/namespaces/default/"):
        kube.patch_environment_status("default", "prod", {"phase": "Degraded"})
    assert len(server.seen) == 1  # nothing more reached the server
    assert kube.get_environment("default", "prod") == {}  # reads still go out
    assert server.seen[-1].startswith("GET ")


def test_without_election_nothing_is_fenced(server: Recorder) -> None:
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    kube = Kube(client.ApiClient(configuration), timeout=5)
    kube.patch_environment_status("default", "prod", {"phase": "Ready"})
    assert [s.split()[0] for s in server.seen] == ["PATCH"]


def test_a_management_write_held_up_past_the_lease_is_not_sent_and_reads_still_are(server: Recorder) -> None:
    lease = Lease()
    kube = kube_for(server, lease)
    management = ManagementClient(f"http://127.0.0.1:{server.server_address[1]}", "operator", "secret",
                                  write_budget=kube.write_budget, check_send=kube.check_send)
    try:
        management.declare_queue("/", "matches.prod", {"x-queue-type": "quorum"})
        assert server.seen == ["PUT /api/queues/%2F/matches.prod"]
        lease.left = 0.0
        with pytest.raises(NotLeading, match=r"refused to send PUT /api/queues/%2F/matches.dev"):
            management.declare_queue("/", "matches.dev", {"x-queue-type": "quorum"})
        with pytest.raises(NotLeading, match="refused to send DELETE"):
            management.delete_queue("/", "matches.prod")
        management.overview()
        assert server.seen == ["PUT /api/queues/%2F/matches.prod", "GET /api/overview"]
    finally:
        management.close()


def test_kopfs_own_session_sends_no_write_once_the_lease_ran_out(server: Recorder) -> None:
    lease = Lease()
    kube = kube_for(server, lease)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    path = "/apis/matchenv.io/v1alpha1/namespaces/default/matchenvironments/prod"

    async def kopf_patches() -> None:
        context = fenced_session(kopf.ConnectionInfo(server=url), kube.check_send)
        async with context.aiohttp_session as session:
            (await session.patch(url + path, json={"metadata": {"finalizers": []}})).release()  # leading
            lease.left = 0.0
            with pytest.raises(NotLeading, match=f"refused to send PATCH {re.escape(path)}"):
                await session.patch(url + path, json={"metadata": {"annotations": {}}})
            (await session.get(url + path)).release()  # its watches and reads go on

    asyncio.run(kopf_patches())
    assert server.seen == [f"PATCH {path}", f"GET {path}"]

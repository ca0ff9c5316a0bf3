"""A converge's Events go to the API server after its status: a loopback HTTP server records the order they arrive
in."""

from __future__ import annotations

from kubernetes import client

from matchenv.operator.kube import Kube
from tests.unit.loopback import Recorder

ENV = {"metadata": {"namespace": "default", "name": "prod", "uid": "u-1"}}
STATUS = "PATCH /apis/matchenv.io/v1alpha1/namespaces/default/matchenvironments/prod/status"
EVENT = "POST /api/v1/namespaces/default/events"


def kube_for(server: Recorder) -> Kube:
    return Kube(client.ApiClient(client.Configuration(host=server.url)), timeout=5)


def test_the_events_a_converge_posts_are_sent_after_its_status(server: Recorder) -> None:
    kube = kube_for(server)
    with kube.events_held():
        kube.post_event(ENV, "BrokerChanged", "declared classic queue matches.prod")
        kube.post_event(ENV, "DeploymentCreated", "created Deployment prod-workers")
        kube.wait_for_events(timeout=0.5)
        assert server.seen == []  # held while the converge runs
        kube.patch_environment_status("default", "prod", {"phase": "Ready"})
    kube.wait_for_events()
    assert server.seen == [STATUS, EVENT, EVENT]


def test_a_converge_within_a_converge_sends_its_events_with_the_outer_one(server: Recorder) -> None:
    kube = kube_for(server)
    with kube.events_held():
        with kube.events_held():
            kube.post_event(ENV, "BrokerChanged", "declared classic queue matches.prod")
        kube.post_event(ENV, "DeploymentCreated", "created Deployment prod-workers")
        kube.patch_environment_status("default", "prod", {"phase": "Ready"})
    kube.wait_for_events()
    assert server.seen == [STATUS, EVENT, EVENT]


def test_outside_a_converge_an_event_is_sent_at_once(server: Recorder) -> None:
    kube = kube_for(server)
    kube.post_event(ENV, "TornDown", "removed broker user")
    kube.wait_for_events()
    assert server.seen == [EVENT]

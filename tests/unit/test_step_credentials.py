"""The credentials step: the worker's password minted once, kept, put back on the broker, rotated on request, never
minted from a stale read, and a Secret someone else made left alone."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

from matchenv.naming import EnvironmentNames
from matchenv.operator.status import parse_rfc3339
from matchenv.operator.steps.credentials import ROTATE_ANNOTATION
from matchenv.topology.client import BrokerError
from tests.unit.world import World

NAMES = EnvironmentNames("c1", "default", "prod", "matches.prod")


def test_a_password_changed_on_the_broker_is_put_back(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    world.broker.put_user("matchenv-env.c1.default.prod", "changed-by-hand")
    world.reconciler.resync_all()
    assert world.broker.users["matchenv-env.c1.default.prod"].has_password(world.password("prod"))


def test_a_secret_whose_password_the_user_never_got_converges(world: World) -> None:
    world.add("prod")
    world.broker.down = True
    world.converge("prod")
    assert world.reason("prod") == "BrokerUnreachable"
    world.broker.down = False
    world.converge("prod")
    # a Secret written, then the broker call lost: the Secret's password is not the user's
    secret = world.kube.secrets[("default", "prod-broker")]
    secret["data"]["password"] = base64.b64encode(b"minted-meanwhile").decode()
    world.reconciler.resync_all()
    assert world.password("prod") == "minted-meanwhile"
    assert world.broker.users["matchenv-env.c1.default.prod"].has_password("minted-meanwhile")


def test_rotation_switches_to_the_other_user_and_removes_the_previous_once_no_pod_runs_with_it(
        world: World) -> None:
    world.add("prod")
    world.converge("prod")
    first, second = "matchenv-env.c1.default.prod", "matchenv-env-b.c1.default.prod"
    old = world.password("prod")
    template = copy.deepcopy(world.kube.deployments[("default", "prod-workers")]["spec"]["template"])
    old_hash = template["metadata"]["annotations"]["matchenv.io/secrets-hash"]
    # two pods still of the last template while the new one rolls out
    pods = [{"metadata": {"name": f"prod-workers-old-{i}", "annotations": {"matchenv.io/secrets-hash": old_hash}}}
            for i in range(2)]
    world.kube.worker_pods[("default", NAMES.selector)] = pods
    world.kube.environments[("default", "prod")]["metadata"]["annotations"][ROTATE_ANNOTATION] = "2026-11-23"
    world.converge("prod")
    new = world.password("prod")
    assert new != old
    secret = world.kube.secrets[("default", "prod-broker")]
    assert base64.b64decode(secret["data"]["username"]).decode() == second
    assert world.broker.users[second].has_password(new)
    assert world.broker.users[first].has_password(old)  # the running pods' user still works
    rights = {u: (p.configure, p.write, p.read) for (u, vhost), p in world.broker.permissions.items() if vhost == "/"}
    assert rights[second] == rights[first]  # the same least privilege
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["template"] != template
    credentials = world.status("prod")["credentials"]
    assert (credentials["user"], credentials["previousUser"]) == (second, first)
    world.converge("prod")
    assert first in world.broker.users  # still a pod of the last template
    assert world.password("prod") == new  # the same annotation value rotates once
    # asked again meanwhile: it waits until the previous user is gone (switching back would change its password)
    world.kube.environments[("default", "prod")]["metadata"]["annotations"][ROTATE_ANNOTATION] = "2026-11-24"
    world.converge("prod")
    assert world.password("prod") == new
    del world.kube.worker_pods[("default", NAMES.selector)]  # rolled out: every pod of the new template
    world.converge("prod")
    assert first not in world.broker.users
    assert "BrokerUserRetired" in [e[1] for e in world.kube.events]
    assert world.status("prod")["credentials"].get("previousUser") is None
    world.converge("prod")  # now the waiting request: back to the first user, with a new password
    assert base64.b64decode(world.kube.secrets[("default", "prod-broker")]["data"]["username"]).decode() == first
    assert world.password("prod") not in (old, new)


def test_a_previous_user_the_broker_will_not_remove_is_said_once_and_shown_until_it_goes(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    first = world.status("prod")["credentials"]["user"]
    world.kube.environments[("default", "prod")]["metadata"]["annotations"][ROTATE_ANNOTATION] = "2026-11-23"
    delete_user = world.broker.delete_user

    def refused(name: str) -> None:
        raise BrokerError("the broker refused", f"DELETE /api/users/{name}", 503)

    world.broker.delete_user = refused  # type: ignore[method-assign]
    for _ in range(3):  # a converge at each resync while the broker refuses
        world.converge("prod")
    credentials = world.status("prod")["credentials"]
    assert credentials["previousUser"] == first
    assert credentials["previousUserProblem"].startswith(f"cannot remove broker user {first} yet: ")
    assert [r for _, r, _ in world.kube.events].count("BrokerUserNotRetired") == 1  # said once, not each pass
    world.broker.delete_user = delete_user  # type: ignore[method-assign]
    world.converge("prod")
    credentials = world.status("prod")["credentials"]
    assert first not in world.broker.users
    assert credentials.get("previousUser") is None
    assert credentials.get("previousUserProblem") is None


def test_rotate_every_rotates_when_due_counted_from_the_last(world: World) -> None:
    world.add("prod", broker={"rotateEvery": "60s"})
    world.converge("prod")
    first = world.password("prod")
    credentials = world.status("prod")["credentials"]
    rotated_at = parse_rfc3339(credentials["rotatedAt"])
    due = parse_rfc3339(credentials["nextRotationAt"])
    assert rotated_at is not None
    assert due == rotated_at + dt.timedelta(seconds=60)
    world.converge("prod")
    assert world.password("prod") == first  # not due yet
    secret = world.kube.secrets[("default", "prod-broker")]
    secret["metadata"]["annotations"]["matchenv.io/rotated-at"] = "2026-01-01T00:00:00Z"  # a minute ago and more
    world.converge("prod")
    assert world.password("prod") != first
    assert world.status("prod")["credentials"]["user"] == "matchenv-env-b.c1.default.prod"
    assert parse_rfc3339(world.status("prod")["credentials"]["nextRotationAt"]) > dt.datetime.now(dt.UTC)


def test_a_pass_reading_a_stale_secret_list_never_mints_again(world: World) -> None:
    for i in range(20):
        world.add(f"env{i}")
    # the pass lists Secrets before any handler ran; each handler converges during the pass
    real_list = world.kube.list_secrets
    stale = real_list("app.kubernetes.io/managed-by=matchenv")

    def listing(selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        for i in range(20):
            world.converge(f"env{i}")  # the create handlers, racing the pass
        return stale

    world.kube.list_secrets = listing  # type: ignore[method-assign]
    world.reconciler.resync_all()
    world.kube.list_secrets = real_list  # type: ignore[method-assign]
    world.reconciler.resync_all()
    assert set(world.broker.put_users.values()) == {1}
    assert world.kube.writes["deployment"] == 20  # one revision each


def test_a_hand_made_secret_is_not_overwritten(world: World) -> None:
    world.kube.add_secret("default", "prod-broker", {"url": "amqp://someone-else"})
    world.add("prod")
    world.converge("prod")
    assert world.reason("prod") == "SecretNotOwned"
    assert world.kube.secrets[("default", "prod-broker")]["data"]["url"] == base64.b64encode(
        b"amqp://someone-else").decode()
    assert "matchenv-env.c1.default.prod" not in world.broker.users
    world.delete("prod")
    assert ("default", "prod-broker") in world.kube.secrets  # not deleted either


def test_the_step_mints_once_keeps_and_rotates_on_request(world: World) -> None:
    from matchenv.connection import BrokerConnection
    from matchenv.operator.steps.credentials import ensure_credentials

    world.add("prod")
    conn = BrokerConnection("amqp://rabbitmq:5672", "http://rabbitmq:15672", "admin", "admin-pw")
    minted, _ = ensure_credentials(world.services, world.context("prod"), conn, None, {})
    assert minted["username"] == "matchenv-env.c1.default.prod"
    assert len(minted["password"]) >= 24
    assert world.password("prod") == minted["password"]
    secret = world.kube.get_secret("default", "prod-broker")
    assert ensure_credentials(world.services, world.context("prod"), conn, secret, minted)[0] == minted
    assert world.kube.writes["secret"] == 1  # kept: nothing written
    world.kube.environments[("default", "prod")]["metadata"]["annotations"] = {ROTATE_ANNOTATION: "2026-12-02"}
    rotated, _ = ensure_credentials(world.services, world.context("prod"), conn, secret, minted)
    assert rotated["password"] != minted["password"]
    assert world.password("prod") == rotated["password"]
    assert [e[1] for e in world.kube.events] == ["BrokerSecretCreated", "BrokerCredentialsRotated"]


def test_a_teams_own_password_is_the_users_and_each_change_of_it_is_followed(world: World) -> None:
    world.kube.add_secret("default", "team-pw", {"password": "from-vault-0001"})
    world.add("prod", broker={"passwordSecretRef": {"name": "team-pw"}})
    world.converge("prod")
    user = "matchenv-env.c1.default.prod"
    assert world.password("prod") == "from-vault-0001"
    assert world.broker.users[user].has_password("from-vault-0001")
    template = world.kube.deployments[("default", "prod-workers")]["spec"]["template"]
    world.kube.add_secret("default", "team-pw", {"password": "from-vault-0002"})  # the team's rotation
    world.reconciler.resync_all()
    assert world.broker.users[user].has_password("from-vault-0002")
    assert world.password("prod") == "from-vault-0002"
    rolled = world.kube.deployments[("default", "prod-workers")]["spec"]["template"]
    assert rolled["metadata"]["annotations"] != template["metadata"]["annotations"]  # the workers roll
    [said] = [m for _, r, m in world.kube.events if r == "BrokerCredentialsRotated"]
    assert said.endswith("with a new password (the password of Secret team-pw, key password)")
    assert world.kube.secrets[("default", "team-pw")]["data"] == {
        "password": base64.b64encode(b"from-vault-0002").decode()}  # read, never written


def test_a_team_password_secret_missing_or_unusable_refuses_the_topology_naming_it(world: World) -> None:
    world.add("prod", broker={"passwordSecretRef": {"name": "team-pw", "key": "amqp-password"}})
    world.converge("prod")
    assert world.reason("prod") == "PasswordSecretInvalid"
    assert "Secret default/team-pw (spec.broker.passwordSecretRef) does not exist" in \
        world.condition("prod", "TopologyReady")["message"]
    assert "matchenv-env.c1.default.prod" not in world.broker.users
    world.kube.add_secret("default", "team-pw", {"amqp-password": "short"})
    world.converge("prod")
    assert "no usable password under key 'amqp-password': at least 12 characters" in \
        world.condition("prod", "TopologyReady")["message"]
    world.kube.add_secret("default", "team-pw", {"amqp-password": "long-enough-now"})
    world.converge("prod")
    assert world.reason("prod") == "Converged"
    assert world.broker.users["matchenv-env.c1.default.prod"].has_password("long-enough-now")

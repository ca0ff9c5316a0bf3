"""The credentials step: the worker's password minted once, kept, put back on the broker, rotated on request, never
minted from a stale read, and a Secret someone else made left alone."""

from __future__ import annotations

import base64
from typing import Any

from matchenv.operator.steps.credentials import ROTATE_ANNOTATION
from tests.unit.world import World


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


def test_rotation_issues_a_new_password_once_and_rolls_the_workers(world: World) -> None:
    world.add("prod")
    world.converge("prod")
    old = world.password("prod")
    template = world.kube.deployments[("default", "prod-workers")]["spec"]["template"]
    world.kube.environments[("default", "prod")]["metadata"]["annotations"][ROTATE_ANNOTATION] = "2026-11-23"
    world.converge("prod")
    new = world.password("prod")
    assert new != old
    user = world.broker.users["matchenv-env.c1.default.prod"]
    assert user.has_password(new)
    assert not user.has_password(old)
    assert world.kube.deployments[("default", "prod-workers")]["spec"]["template"] != template
    world.converge("prod")
    assert world.password("prod") == new  # the same annotation value rotates once


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
    minted = ensure_credentials(world.services, world.context("prod"), conn, None, {})
    assert minted["username"] == "matchenv-env.c1.default.prod"
    assert len(minted["password"]) >= 24
    assert world.password("prod") == minted["password"]
    secret = world.kube.get_secret("default", "prod-broker")
    assert ensure_credentials(world.services, world.context("prod"), conn, secret, minted) == minted
    assert world.kube.writes["secret"] == 1  # kept: nothing written
    world.kube.environments[("default", "prod")]["metadata"]["annotations"] = {ROTATE_ANNOTATION: "2026-12-02"}
    rotated = ensure_credentials(world.services, world.context("prod"), conn, secret, minted)
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

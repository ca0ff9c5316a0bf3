"""The scraper's publish-only broker user and its Secret, kept by each resync pass."""

from __future__ import annotations

import base64

from matchenv.naming import MANAGED_BY, MANAGED_BY_LABEL
from matchenv.operator.settings import OperatorSettings
from tests.cases import CLUSTER
from tests.unit.world import World


def test_the_scraper_gets_a_publish_only_user_whose_password_is_in_its_secret(world: World) -> None:
    world.reconciler.resync_all()
    secret = world.kube.secrets[("matchenv-system", "matchenv-publisher")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    user = "matchenv-publisher.c1.matchenv-system"
    assert data["username"] == user
    assert data["url"] == f"amqp://{user}:{data['password']}@rabbitmq:5672/%2F"
    assert world.broker.users[user].has_password(data["password"])
    perms = world.broker.permissions[(user, "/")]
    # publish to the fanout and nothing else: no queue to declare or read, not the default exchange
    assert (perms.configure, perms.write, perms.read) == ("", "^matches-fanout$", "")
    writes, calls = dict(world.kube.writes), world.broker.calls
    world.reconciler.resync_all()
    assert dict(world.kube.writes) == writes
    assert world.broker.calls == calls + 1


def test_the_publisher_user_of_the_previous_version_goes_once_the_secret_names_the_new_one(world: World) -> None:
    world.kube.add_secret("matchenv-system", "matchenv-publisher", {
        "url": "amqp://matchenv-publisher.matchenv-system:pw@rabbitmq:5672/%2F",
        "username": "matchenv-publisher.matchenv-system", "password": "pw"}, labels={MANAGED_BY_LABEL: MANAGED_BY})
    world.broker.put_user("matchenv-publisher.matchenv-system", "pw")
    world.reconciler.resync_all()
    data = world.kube.secrets[("matchenv-system", "matchenv-publisher")]["data"]
    assert base64.b64decode(data["username"]).decode() == "matchenv-publisher.c1.matchenv-system"
    assert world.broker.users["matchenv-publisher.c1.matchenv-system"].has_password("pw")  # the scraper's password
    assert "matchenv-publisher.matchenv-system" not in world.broker.users
    # another cluster of the previous version may make it again: it is not deleted a second time
    world.broker.put_user("matchenv-publisher.matchenv-system", "theirs")
    world.reconciler.resync_all()
    assert "matchenv-publisher.matchenv-system" in world.broker.users


def test_a_deleted_publisher_user_comes_back_with_the_password_the_scraper_has(world: World) -> None:
    world.reconciler.resync_all()
    password = base64.b64decode(world.kube.secrets[("matchenv-system", "matchenv-publisher")]["data"]["password"])
    world.broker.delete_user("matchenv-publisher.c1.matchenv-system")
    world.reconciler.resync_all()
    assert world.broker.users["matchenv-publisher.c1.matchenv-system"].has_password(password.decode())


def test_a_publisher_secret_the_user_made_is_left_alone_and_so_is_the_broker(world: World) -> None:
    world.kube.add_secret("matchenv-system", "matchenv-publisher", {"url": "amqp://mine:pw@elsewhere/"})
    world.reconciler.resync_all()
    data = world.kube.secrets[("matchenv-system", "matchenv-publisher")]["data"]
    assert base64.b64decode(data["url"]).decode() == "amqp://mine:pw@elsewhere/"
    assert "matchenv-publisher.c1.matchenv-system" not in world.broker.users


def test_no_publisher_when_turned_off(world: World) -> None:
    world.reconciler.services.settings = OperatorSettings.from_env({"MATCHENV_PUBLISHER_SECRET": ""},
                                                                   leader_election=False, cluster_id=CLUSTER)
    world.reconciler.resync_all()
    assert ("matchenv-system", "matchenv-publisher") not in world.kube.secrets
    assert not world.broker.users

"""The management client reads the process environment once (proxies, CA bundle), not at every call, and still
honours it as requests would: HTTP_PROXY for a node NO_PROXY does not name, no proxy for one it does."""

from __future__ import annotations

import pytest

from matchenv.topology.client import ManagementClient, NodeUnreachable
from tests.unit.loopback import Recorder

NOTHING_LISTENS = "http://127.0.0.1:9"  # the discard port: refused at once on loopback


def test_a_node_behind_the_proxy_is_reached_through_it(server: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    management = ManagementClient(NOTHING_LISTENS, "operator", "secret", timeout=(1.0, 2.0))
    try:
        assert management.overview() == {}
        assert server.seen == [f"GET {NOTHING_LISTENS}/api/overview"]  # the absolute URL: a proxy's request
        monkeypatch.delenv("HTTP_PROXY")  # read when the client was made, not at each call
        management.overview()
        assert len(server.seen) == 2
    finally:
        management.close()


def test_a_node_no_proxy_names_is_reached_directly(server: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    management = ManagementClient(NOTHING_LISTENS, "operator", "secret", timeout=(1.0, 2.0))
    try:
        with pytest.raises(NodeUnreachable):
            management.overview()
        assert server.seen == []
    finally:
        management.close()

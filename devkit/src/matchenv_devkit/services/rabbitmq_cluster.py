"""A RabbitMQ cluster of host-process nodes, each in a network namespace of its own on one bridge
(:class:`~matchenv_devkit.services.netlab.NetLab`), for tests that kill a node, cut one off the others or raise an
alarm. The nodes find each other by classic configuration peer discovery (every member listed), share an Erlang
cookie and admin credentials, and handle partitions with ``pause_minority``: a node cut off from the majority stops
serving, so its clients move to the nodes that still form a quorum.

Clients reach each node at its own address; :attr:`RabbitMQCluster.amqp_urls` and
:attr:`RabbitMQCluster.management_urls` list them in the ``;``-separated form matchenv reads.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import requests

from matchenv_devkit.services.netlab import NetLab
from matchenv_devkit.services.process import wait_for
from matchenv_devkit.services.rabbitmq import BrokerEndpoints, BrokerStartError, NodePlacement, RabbitMQNode
from matchenv_devkit.services.rabbitmq_releases import RabbitMQRelease

_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
_PROCESS = re.compile(r"\] (<[0-9.]+>) ")  # the Erlang process a log line is from


class RabbitMQCluster:
    """``size`` nodes under ``state_dir`` (one folder each), on a bridge of their own."""

    def __init__(self, state_dir: Path, size: int = 3, release: RabbitMQRelease | None = None,
                 stats_interval_ms: int = 1000) -> None:
        self.state_dir = state_dir.resolve()
        self.size = size
        self.release = release
        self.stats_interval_ms = stats_interval_ms
        self.lab = NetLab()
        self.nodes: list[RabbitMQNode] = []
        self.username = "matchenv-admin"
        self.password = secrets.token_urlsafe(18)

    def start(self, timeout: float = 180) -> RabbitMQCluster:
        """Make the namespaces, start the nodes one after the other; return when every node counts all members
        running."""
        self.lab.create()
        names = [f"n{i + 1}" for i in range(self.size)]
        addresses = [self.lab.add_host(name) for name in names]
        members = [f"rabbit@{address}" for address in addresses]
        cookie = secrets.token_hex(16)
        for i, (name, address, member) in enumerate(zip(names, addresses, members, strict=True)):
            # the first node is the seed (it lists itself alone, so it boots without waiting for peers); the others
            # list every member and join the one that runs: started together, RabbitMQ 4.0.5's members can race
            # into a node that fails to boot (mnesia "none_active")
            peers = members[:1] if i == 0 else members
            config = ("cluster_formation.peer_discovery_backend = classic_config",
                      *(f"cluster_formation.classic_config.nodes.{j + 1} = {m}" for j, m in enumerate(peers)),
                      "cluster_partition_handling = pause_minority", "log.console.level = info")
            placement = NodePlacement(address, member, tuple(self.lab.exec_argv(name)), cookie, self.username,
                                      self.password, config)
            self.nodes.append(RabbitMQNode(self.state_dir / name, release=self.release, placement=placement,
                                           stats_interval_ms=self.stats_interval_ms))
        for node in self.nodes:
            node.start(timeout=timeout)
        wait_for(lambda: all(self.running_members(node) == self.size for node in self.nodes), timeout=timeout,
                 what=f"{self.size} nodes to form one cluster")
        return self

    def running_members(self, node: RabbitMQNode) -> int:
        """How many members ``node`` sees running (0 when it does not answer)."""
        ep = node.endpoints
        try:
            response = requests.get(f"{ep.management_url}/api/nodes", params={"columns": "name,running"},
                                    auth=(ep.username, ep.password), timeout=3)
        except requests.RequestException:
            return 0
        if response.status_code != 200:
            return 0
        return sum(1 for row in response.json() if row.get("running"))

    @property
    def endpoints(self) -> list[BrokerEndpoints]:
        return [node.endpoints for node in self.nodes]

    @property
    def amqp_urls(self) -> str:
        """Every node's admin AMQP URL, ``;``-separated."""
        return ";".join(ep.amqp_url for ep in self.endpoints)

    @property
    def management_urls(self) -> str:
        return ";".join(ep.management_url for ep in self.endpoints)

    def amqp_base_urls(self) -> str:
        """Every node's AMQP URL without credentials (as a broker Secret's ``url`` holds it), ``;``-separated."""
        return ";".join(f"amqp://{ep.host}:{ep.amqp_port}" for ep in self.endpoints)

    def describe_queues(self, names: Sequence[str], log_lines: int = 12) -> str:
        """What each node says about the queues ``names``, for a failure message: its ``list_queues`` row (type,
        state, leader, members, online), the last ``log_lines`` lines of its log that name one of them, and its last
        warnings and errors."""
        parts = []
        for i, node in enumerate(self.nodes):
            try:
                listed = node.ctl("list_queues", "--quiet", "--no-table-headers", "name", "type", "state", "leader",
                                  "members", "online", timeout=30)
                rows = [line for line in listed.splitlines() if line.split("\t", 1)[0] in names] or ["(not listed)"]
            except (BrokerStartError, subprocess.TimeoutExpired) as exc:
                rows = [f"list_queues failed: {exc}"]
            text = _COLOURS.sub("", node.log_file.read_text(errors="replace")) if node.log_file.exists() else ""
            lines = text.splitlines()
            said = [line for line in lines if any(name in line for name in names)][-log_lines:]
            # its last warnings and errors, but for the notice of deprecated features every boot prints
            notice = {m.group(1) for line in lines if "Deprecated features" in line
                      and (m := _PROCESS.search(line))}
            warned = [line for line in lines[-500:] if ("[warning]" in line or "[error]" in line)
                      and not ((m := _PROCESS.search(line)) and m.group(1) in notice)][-log_lines:]
            parts.append("\n".join([f"n{i + 1} ({node.endpoints.host}):", *rows, *said, *warned]))
        return "\n".join(parts)

    def cut(self, index: int) -> None:
        """Node ``index`` loses its link to the others and to every client."""
        self.lab.cut(f"n{index + 1}")

    def heal(self, index: int) -> None:
        self.lab.heal(f"n{index + 1}")

    def set_memory_alarm(self, on: bool) -> None:
        """Raise (or clear) the memory alarm on every node: the cluster blocks every publishing connection."""
        for node in self.nodes:
            node.ctl("set_vm_memory_high_watermark", "0.000001" if on else "0.6")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.lab.destroy()

    def __enter__(self) -> RabbitMQCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

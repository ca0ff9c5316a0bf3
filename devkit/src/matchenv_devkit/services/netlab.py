"""Several "hosts" on this machine: network namespaces (Debian's ``iproute2``), each with one veth link to a bridge
in the host's namespace, so that the host reaches every one of them and they reach each other, all traffic staying
on this machine. A host's link can be taken down inside its namespace (a cable pulled: a network partition) and
brought back.

Names are short (interfaces allow 15 characters) and carry a per-lab tag; the subnet is one ``/24`` under
``10.247.0.0/16`` that no interface of this machine uses yet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass, field
from types import TracebackType


class NetLabError(RuntimeError):
    """A command of ``ip`` failed; the message holds it and what it said."""


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise NetLabError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    used = [ipaddress.ip_interface(word) for line in _ip("-4", "-o", "addr").splitlines()
            for i, word in enumerate(line.split()) if i > 0 and line.split()[i - 1] == "inet"]
    start = os.getpid() % 200
    for n in range(256):
        net = ipaddress.IPv4Network(f"10.247.{(start + n) % 256}.0/24")
        if not any(iface.ip in net or net.overlaps(iface.network) for iface in used):
            return net
    raise NetLabError("no free /24 under 10.247.0.0/16")


@dataclass
class NetLab:
    """A bridge and the namespaces on it. Use as a context manager, or :meth:`create` and :meth:`destroy`."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000:x}")
    subnet: ipaddress.IPv4Network | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # name → address

    @property
    def bridge(self) -> str:
        return f"mlb{self.tag}"

    @property
    def gateway(self) -> str:
        """The host's own address on the bridge."""
        assert self.subnet is not None, "not created"
        return str(self.subnet.network_address + 1)

    def netns(self, name: str) -> str:
        return f"mlab-{self.tag}-{name}"

    def create(self) -> NetLab:
        self.subnet = self.subnet or _free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        # bridged frames pass the host's iptables when br_netfilter is on (a kubelet turns it on): let them through
        subprocess.run(["iptables", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"],
                       capture_output=True, timeout=30, check=False)
        return self

    def add_host(self, name: str) -> str:
        """A namespace with one link to the bridge; its address."""
        assert self.subnet is not None, "not created"
        address = str(self.subnet.network_address + 11 + len(self.hosts))
        ns, outside, inside = self.netns(name), f"mlh{self.tag}{len(self.hosts)}", f"mln{self.tag}{len(self.hosts)}"
        _ip("netns", "add", ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("-n", ns, "link", "set", inside, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
        # no default route: a lookup of anything outside (a DNS server) fails at once instead of timing out
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        self.hosts[name] = address
        return address

    def cut(self, name: str) -> None:
        """Take the host's link down inside its namespace: it reaches nothing, nothing reaches it."""
        _ip("-n", self.netns(name), "link", "set", "eth0", "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.netns(name), "link", "set", "eth0", "up")

    def exec_argv(self, name: str) -> list[str]:
        """The prefix that runs a command inside the host's namespace."""
        return ["ip", "netns", "exec", self.netns(name)]

    def destroy(self) -> None:
        """Kill what still runs in the namespaces (e.g. an Erlang port mapper), delete them and the bridge."""
        for name in self.hosts:
            ns = self.netns(name)
            for pid in _ip("netns", "pids", ns, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "delete", ns, check=False)
        self.hosts.clear()
        subprocess.run(["iptables", "-D", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"],
                       capture_output=True, timeout=30, check=False)
        _ip("link", "delete", self.bridge, check=False)

    def __enter__(self) -> NetLab:
        return self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

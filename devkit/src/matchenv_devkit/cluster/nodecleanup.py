"""Finding and removing what a real node made on this machine: its processes, mounts, cgroups, iptables chains and
files in the fixed paths its programs use. :func:`leftovers` lists what still exists; the rest are the steps
:meth:`matchenv_devkit.cluster.realnode.RealNode.stop` takes."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from matchenv_devkit.cluster.nodeconfig import BRIDGE, POD_CIDR, NodePaths
from matchenv_devkit.cluster.versions import NodeBinaries
from matchenv_devkit.services.process import process_alive

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's symlinks; the path is fixed in the kubelet
CNI_CACHE = Path("/var/lib/cni/results")  # libcni's result cache; the path is fixed in containerd's CNI library
SHIM_SOCKETS = Path("/run/containerd/s")  # the runc shims' sockets; the path is fixed in containerd
# Fixed paths the node's programs write to; those that did not exist before ``start`` are removed by ``stop``,
# otherwise only what appeared in them since.
FIXED_DIRS = (Path("/run/containerd"), Path("/var/lib/cni"), CONTAINER_LOG_LINKS)
IPTABLES = ("iptables", "ip6tables")


def foreign_node() -> str | None:
    """What on this machine shows a node other than this one (checked before starting, after cleaning up this
    state directory's own): the bridge, the kubelet's pod cgroups, or kube-proxy's chains."""
    if link_exists(BRIDGE):
        return f"bridge {BRIDGE} exists"
    if kubepods_cgroups():
        return f"the cgroup {kubepods_cgroups()[0]} exists"
    for binary in IPTABLES:
        dump = subprocess.run([f"{binary}-save"], capture_output=True, text=True).stdout
        if ":KUBE-SERVICES" in dump or ":KUBE-FIREWALL" in dump:
            return f"{binary} has KUBE-* chains"
    return None


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.05)


def kubepods_cgroups() -> list[Path]:
    """The kubelet's cgroup trees (``kubepods`` under each v1 controller)."""
    return [p for p in CGROUP_ROOT.glob("*/kubepods") if p.is_dir()]


def container_pids() -> list[int]:
    """Every process in the kubelet's pod cgroups: the containers and their sandboxes."""
    pids: set[int] = set()
    for tree in kubepods_cgroups():
        for procs in tree.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(line) for line in procs.read_text().split())
    return sorted(pids)


def shim_pids(socket: Path) -> list[int]:
    """containerd's runc shims for the containerd listening on ``socket``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in b" ".join(argv):
                found.append(int(proc.name))
    return found


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo, octal escapes decoded)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def remove_newer(paths: Iterable[Path], since: float) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            if path.lstat().st_mtime >= since - 1:
                path.unlink()


def chain_removal(dump: str, prefix: str) -> list[list[str]]:
    """The arguments that delete every ``prefix`` chain in an ``iptables-save`` dump: first the jumps to them from
    other chains, then flush, then delete (a chain can only go once nothing refers to it)."""
    table = ""
    jumps: list[list[str]] = []
    chains: list[tuple[str, str]] = []
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(f":{prefix}"):
            chains.append((table, line[1:].split()[0]))
        elif line.startswith("-A ") and f"-j {prefix}" in line and not line.startswith(f"-A {prefix}"):
            jumps.append(["-t", table, "-D", *shlex.split(line)[1:]])
    return [*jumps, *(["-t", t, "-F", c] for t, c in chains), *(["-t", t, "-X", c] for t, c in chains)]


def remove_chains(binary: str, prefix: str) -> None:
    """Delete every ``prefix`` chain of ``binary`` (iptables or ip6tables) in every table, and the jumps to them."""
    dump = subprocess.run([f"{binary}-save"], capture_output=True, text=True).stdout
    for args in chain_removal(dump, prefix):
        subprocess.run([binary, *args], capture_output=True)


def remove_cgroup(tree: Path) -> None:
    for directory in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        tree.rmdir()


def leftovers(root: Path, binaries: NodeBinaries | None = None) -> list[str]:
    """What a node with state under ``root`` left on this machine: each item says what it is. Empty when clean."""
    found: list[str] = []
    bin_dir = str((binaries or NodeBinaries.default()).bin_dir)
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            exe = os.readlink(proc / "exe")
            cgroups = proc.joinpath("cgroup").read_text()
            if exe.startswith(bin_dir) or re.search(r":/kubepods(/|$)", cgroups, re.MULTILINE):
                found.append(f"process {proc.name} ({exe})")
    found += [f"mount {m}" for m in mounts_under(root)]
    found += [f"overlay mount {line.split()[4]}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if " - overlay " in line and str(root) in line]
    if link_exists(BRIDGE):
        found.append(f"bridge {BRIDGE}")
    veths = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout
    found += [f"veth {line.split(':')[1].strip()}" for line in veths.splitlines() if line.strip()]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith("cni-")]
    for binary in IPTABLES:
        rules = subprocess.run([f"{binary}-save"], capture_output=True, text=True).stdout
        found += [f"{binary} {line}" for line in rules.splitlines()
                  if re.search(r"KUBE-|CNI-|" + re.escape(BRIDGE) + "|" + re.escape(POD_CIDR), line)]
    found += [f"file {p}" for d in (SHIM_SOCKETS, CNI_CACHE) if d.is_dir() for p in d.iterdir()]
    if NodePaths(root).socket_dir.exists():
        found.append(f"directory {NodePaths(root).socket_dir}")
    found += [f"cgroup {p}" for p in kubepods_cgroups()]
    return found

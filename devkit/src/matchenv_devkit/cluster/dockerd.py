"""A Docker engine of the project's own (Debian's ``docker.io``), only for kind: its data, exec root, socket and
pid file under a state directory, started and stopped by :class:`DockerEngine`, leaving nothing of it behind.

kind's nodes are privileged containers, and a privileged container asks runc for every capability; a machine whose
capability bounding set lacks some (this one lacks ``CAP_SYS_RESOURCE``) fails them all ("unable to apply caps").
The engine's default runtime is therefore :data:`RUNTIME_WRAPPER`: it drops from the bundle's ``config.json`` the
capabilities the bounding set does not hold, then runs runc. Docker's start also adds its iptables chains, a
``docker0`` bridge and sets the ``FORWARD`` policy to ``DROP``: :meth:`DockerEngine.stop` removes the chains and the
bridges it made and puts the policy back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from matchenv_devkit.services.process import process_alive

# capability numbers of linux/capability.h, in order
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
RUNTIME_NAME = "matchenv-runc"
# the runtime wrapper: Python, run by the engine for each container's create/run, reading the bundle's config.json
RUNTIME_WRAPPER = '''#!/usr/bin/env python3
"""runc, without the capabilities this machine's bounding set does not hold (written by matchenv's dev kit)."""
import json, os, sys
RUNC = {runc!r}
NAMES = {names!r}
args = sys.argv[1:]


def held():
    with open("/proc/self/status") as status:
        bounding = int(next(line for line in status if line.startswith("CapBnd:")).split()[1], 16)
    return {{"CAP_" + name for bit, name in enumerate(NAMES) if bounding >> bit & 1}}


def drop(path, process_of):
    with open(path) as f:
        document = json.load(f)
    capabilities = process_of(document).get("capabilities") or {{}}
    allowed = held()
    for kind, names in capabilities.items():
        capabilities[kind] = [name for name in names if name in allowed]
    with open(path, "w") as f:
        json.dump(document, f)


if "create" in args or "run" in args:  # a container: its bundle's config.json
    bundle = args[args.index("--bundle") + 1] if "--bundle" in args else "."
    drop(os.path.join(bundle, "config.json"), lambda config: config.get("process", {{}}))
elif "exec" in args and "--process" in args:  # `docker exec --privileged`: the process file
    drop(args[args.index("--process") + 1], lambda process: process)
os.execv(RUNC, [RUNC, *args])
'''
DOCKER_CHAINS = {"filter": ("DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2"),
                 "nat": ("DOCKER",)}

Progress = Callable[[str], None]


class DockerError(RuntimeError):
    """The engine could not be started or stopped; the message says why, with its log's tail."""


def runtime_wrapper(runc: str) -> str:
    """The text of the runtime wrapper that runs ``runc``."""
    return RUNTIME_WRAPPER.format(runc=runc, names=CAPABILITIES)


def forward_policy() -> str:
    """The host's iptables ``FORWARD`` policy (``ACCEPT`` or ``DROP``)."""
    out = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True).stdout
    return next(line.split()[2] for line in out.splitlines() if line.startswith("-P FORWARD"))


class DockerEngine:
    """``dockerd`` with everything under ``state_dir``; ``host`` is the ``DOCKER_HOST`` to give clients."""

    def __init__(self, state_dir: Path, progress: Progress = lambda _msg: None) -> None:
        self.state_dir = state_dir
        self.progress = progress
        self.socket = state_dir / "docker.sock"
        self.pidfile = state_dir / "dockerd.pid"
        self.log_path = state_dir / "dockerd.log"
        self.policy_file = state_dir / "forward-policy"  # the FORWARD policy before the engine started
        self._child: subprocess.Popen[bytes] | None = None  # the engine, when this process started it

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def start(self, timeout: float = 60) -> DockerEngine:
        """Start the engine (or find it running) and wait until it answers."""
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerError("dockerd is not installed (Debian's docker.io package provides it)")
        runc = shutil.which("runc")
        if runc is None:
            raise DockerError("runc is not installed (Debian's docker.io package depends on it)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        wrapper = self.state_dir / RUNTIME_NAME
        wrapper.write_text(runtime_wrapper(runc))
        wrapper.chmod(0o755)  # rewritten even for a running engine: it execs the file for each container
        if self.running():
            return self
        if not self.policy_file.exists():
            self.policy_file.write_text(forward_policy())
        argv = [dockerd, "--data-root", str(self.state_dir / "data"), "--exec-root", str(self.state_dir / "exec"),
                "--pidfile", str(self.pidfile), "--host", self.host, "--add-runtime", f"{RUNTIME_NAME}={wrapper}",
                "--default-runtime", RUNTIME_NAME]
        with self.log_path.open("ab") as log:
            self._child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                raise DockerError(f"dockerd did not answer within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.5)
        self.progress(f"Docker engine answering on {self.host}")
        return self

    def answers(self) -> bool:
        return self.socket.exists() and self.docker_ok("info")

    def running(self) -> bool:
        pid = self._pid()
        return pid is not None and process_alive(pid) and self.answers()

    def stop(self, timeout: float = 60) -> None:
        """Remove what the engine made (its containers, its networks, then its chains and bridges), stop it, put
        the ``FORWARD`` policy back, and delete its data and exec roots (images and all)."""
        pid = self._pid()
        if pid is not None and process_alive(pid) and self.answers():
            containers = self.docker("ps", "-aq").split()
            if containers:
                self.docker_ok("rm", "-f", "-v", *containers)
            self.docker_ok("network", "prune", "-f")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            deadline = time.monotonic() + timeout
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        if self._child is not None:  # reaped here, not left a zombie while this process lives on
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=10)
            self._child = None
        self._remove_network_leftovers()
        if self.policy_file.exists():
            subprocess.run(["iptables", "-P", "FORWARD", self.policy_file.read_text().strip()], check=False)
            self.policy_file.unlink()
        if not (pid is not None and process_alive(pid)):
            for root in ("data", "exec"):
                shutil.rmtree(self.state_dir / root, ignore_errors=True)
        self.progress("Docker engine stopped; its chains, bridges and data removed")

    def docker(self, *args: str, timeout: float = 600, stdin: bytes | None = None) -> str:
        proc = subprocess.run(["docker", *args], capture_output=True, env=self.env, timeout=timeout, input=stdin)
        if proc.returncode != 0:
            raise DockerError(f"docker {' '.join(args[:3])} failed ({proc.returncode}): "
                              f"{proc.stderr.decode(errors='replace')[-3000:]}")
        return proc.stdout.decode(errors="replace")

    def docker_ok(self, *args: str) -> bool:
        return subprocess.run(["docker", *args], capture_output=True, env=self.env, timeout=120).returncode == 0

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _remove_network_leftovers() -> None:
        for table, chains in DOCKER_CHAINS.items():
            rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
            for rule in leftover_rules(rules.splitlines(), chains):
                subprocess.run(["iptables", "-t", table, *rule], capture_output=True)
            for chain in chains:
                subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
                subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
        links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
        for name in docker_bridges(links.splitlines()):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)


def leftover_rules(rules: Sequence[str], chains: Sequence[str]) -> list[list[str]]:
    """The ``iptables -D`` arguments removing every rule (in ``iptables -S`` lines) of another chain that jumps to
    one of ``chains`` or names one of Docker's bridges as its in or out interface."""
    found = []
    for rule in rules:
        parts = rule.split()
        if len(parts) < 3 or parts[0] != "-A" or parts[1] in chains:
            continue
        target = parts[parts.index("-j") + 1] if "-j" in parts[:-1] else ""
        interfaces = [parts[i + 1] for i, part in enumerate(parts[:-1]) if part in ("-i", "-o")]
        if target in chains or any(is_docker_bridge(name) for name in interfaces):
            found.append(["-D", *parts[1:]])
    return found


def is_docker_bridge(name: str) -> bool:
    """``docker0`` or a user network's ``br-`` followed by twelve hex digits of its id."""
    suffix = name.removeprefix("br-")
    return name == "docker0" or (suffix != name and len(suffix) == 12 and all(c in "0123456789abcdef" for c in suffix))


def docker_bridges(links: Sequence[str]) -> list[str]:
    """The bridges Docker makes (``docker0`` and ``br-<network id>``) in ``ip -o link show type bridge`` lines."""
    names = [line.split(":")[1].strip().split("@")[0] for line in links if line.count(":") >= 2]
    return [name for name in names if is_docker_bridge(name)]

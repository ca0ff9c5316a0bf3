"""A private RabbitMQ node (Debian's rabbitmq-server + management plugin) on loopback, for tests and the demo.

Own ports, own data and log directories, own Erlang cookie (``HOME`` points into the state directory), and an admin
user with a generated password instead of ``guest``. The node runs as a child process in the foreground; stopping
and starting it again keeps its data, so tests can take the broker away and bring it back.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pika
import requests

from matchenv_devkit.services.process import die_with_parent, free_port, stop_process_group
from matchenv_devkit.services.rabbitmq_releases import CTL, HOST, RabbitMQRelease, ReleaseUnavailable


class BrokerStartError(RuntimeError):
    """The node did not come up; the message holds the tail of its log."""


@dataclass(frozen=True)
class BrokerEndpoints:
    """How to reach the node: AMQP and management URLs with the admin credentials."""

    amqp_port: int
    http_port: int
    username: str
    password: str
    host: str = "127.0.0.1"

    @property
    def amqp_url(self) -> str:
        return (f"amqp://{quote(self.username, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.amqp_port}"
                "/%2F")

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


@dataclass(frozen=True)
class NodePlacement:
    """Where a cluster member runs: its own network namespace (``run_prefix`` enters it), address and long node
    name, the cluster's shared cookie and admin credentials, and the configuration lines that make it join."""

    address: str
    node_name: str
    run_prefix: tuple[str, ...]
    cookie: str
    username: str
    password: str = field(repr=False)
    config: tuple[str, ...] = ()
    # seconds until a silent peer counts as gone (Erlang's default is 60: a node cut off for 30 s would go unnoticed
    # while every call to it stalls the others)
    net_ticktime: int = 10


class RabbitMQNode:
    """One private RabbitMQ node whose state lives in ``state_dir``."""

    def __init__(self, state_dir: Path, name: str = "matchenv", stats_interval_ms: int = 500,
                 detached: bool = False, pod_address: str | None = None,
                 release: RabbitMQRelease | None = None, placement: NodePlacement | None = None) -> None:
        """``pod_address``: a second AMQP listener (same port) that pods on the real node reach, e.g. its bridge;
        ``release``: which RabbitMQ (default: this machine's package); ``placement``: a cluster member's own
        network namespace, address and cluster settings (default: a lone node on loopback)."""
        self.release = release or HOST
        self.state_dir = state_dir.resolve()
        self.pod_address = pod_address
        self.placement = placement
        self.node_name = placement.node_name if placement else f"{name}-{os.getpid()}@localhost"
        self.stats_interval_ms = stats_interval_ms
        self.detached = detached
        self.endpoints = BrokerEndpoints(free_port(), free_port(), placement.username if placement else
                                         "matchenv-admin", placement.password if placement else
                                         secrets.token_urlsafe(18), placement.address if placement else "127.0.0.1")
        self.dist_port = free_port()
        self.prometheus_port = free_port()  # the rabbitmq_prometheus plugin's /metrics, as a pod's port 15692
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.state_dir / "rabbitmq.out"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.state_dir),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_MNESIA_BASE": str(self.state_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.state_dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.state_dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.state_dir / "enabled_plugins"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_PID_FILE": str(self.state_dir / "rabbitmq.pid"),
            **({"RABBITMQ_USE_LONGNAME": "true",
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel net_ticktime {self.placement.net_ticktime}"}
               if self.placement else {}),
        }

    def _write_config(self) -> None:
        ep = self.endpoints
        (self.state_dir / "rabbitmq.conf").write_text(
            "\n".join([
                f"listeners.tcp.default = {ep.host}:{ep.amqp_port}",
                *([f"listeners.tcp.pods = {self.pod_address}:{ep.amqp_port}"] if self.pod_address else []),
                f"management.tcp.port = {ep.http_port}",
                f"management.tcp.ip = {ep.host}",
                f"prometheus.tcp.port = {self.prometheus_port}",
                f"prometheus.tcp.ip = {ep.host}",
                f"collect_statistics_interval = {self.stats_interval_ms}",
                f"default_user = {ep.username}",
                f"default_pass = {ep.password}",
                "default_user_tags.administrator = true",
                "default_permissions.configure = .*",
                "default_permissions.read = .*",
                "default_permissions.write = .*",
                "log.console = true",
                "log.console.level = warning",
                "log.file = false",
                *(self.placement.config if self.placement else []),
                "",
            ])
        )
        if self.placement:  # the cluster's shared Erlang cookie, in the node's HOME
            cookie = self.state_dir / ".erlang.cookie"
            cookie.write_text(self.placement.cookie)
            cookie.chmod(0o400)
        (self.state_dir / "enabled_plugins").write_text(
            "[rabbitmq_management,rabbitmq_prometheus,rabbitmq_event_exchange].\n")

    def start(self, timeout: float = 90.0) -> RabbitMQNode:
        """Start (or restart, keeping data) the node; return when the management API answers."""
        if self._proc and self._proc.poll() is None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not (self.state_dir / "rabbitmq.conf").exists():
            self._write_config()
        try:
            argv, extra = self.release.command(self.state_dir)
        except ReleaseUnavailable as exc:
            raise BrokerStartError(str(exc)) from exc
        argv = [*(self.placement.run_prefix if self.placement else []), *argv]
        log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            argv,
            env={**self._env(), **extra},
            cwd=self.state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if self.detached else die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerStartError(f"rabbitmq-server {self.release.series} exited with {self._proc.returncode}:"
                                       f"\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.3)
        self.stop()
        raise BrokerStartError(f"rabbitmq-server did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """Its virtual hosts run (not the aliveness test: it declares a transient queue, a feature RabbitMQ 4
        deprecates)."""
        ep = self.endpoints
        try:
            response = requests.get(f"{ep.management_url}/api/health/checks/virtual-hosts",
                                    auth=(ep.username, ep.password), timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def stop(self) -> None:
        """Stop the node (TERM, then KILL after 30 s). Its data stays for a later :meth:`start`."""
        if self._proc is None:
            return
        stop_process_group(self._proc, timeout=30)
        self._proc = None

    def kill(self) -> None:
        """Kill the node at once, as a crash would."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=30)
        self._proc = None

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl`` against this node (its cookie, its name, its namespace); its output, or
        :class:`BrokerStartError` with what it said."""
        argv, extra = self.release.command(self.state_dir, CTL, "-n", self.node_name,
                                           *(["--longnames"] if self.placement else []), *args)
        argv = [*(self.placement.run_prefix if self.placement else []), *argv]
        result = subprocess.run(argv, env={**self._env(), **extra}, cwd=self.state_dir, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise BrokerStartError(f"rabbitmqctl {' '.join(args)}: {result.stdout[-500:]} {result.stderr[-1000:]}")
        return result.stdout

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RabbitMQNode:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready in ``queue`` now (a passive declare over AMQP: the management API's counts lag)."""
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)

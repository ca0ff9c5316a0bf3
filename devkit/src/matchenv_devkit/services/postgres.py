"""A throw-away PostgreSQL cluster (Debian's postgresql) on loopback, for tests and the demo.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (``runuser``). Trust
authentication on 127.0.0.1 only; the data directory lives under the given state directory. Stopping and starting
again keeps the data, so tests can take the database away and bring it back.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg

from matchenv_devkit.services.process import free_port


class DatabaseStartError(RuntimeError):
    """initdb or the server failed; the message holds the tail of its log."""


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise DatabaseStartError("PostgreSQL is not installed (run `make system-deps`)")
    return Path(found[-1]).parent


def _reachable_by_postgres(path: Path) -> bool:
    done = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
                          capture_output=True, timeout=10)
    return done.returncode == 0


class PostgresServer:
    """One private PostgreSQL server whose data lives in ``state_dir``."""

    def __init__(self, state_dir: Path, port: int | None = None, pod_network: tuple[str, str] | None = None) -> None:
        """``pod_network``: ``(address, cidr)``: also listen on ``address`` (the real node's bridge) and accept
        password logins from ``cidr``; :meth:`pod_url` gives the URL pods use."""
        self.as_root = os.geteuid() == 0
        self.pod_network = pod_network
        self.pod_password = secrets.token_urlsafe(18)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.own_dir = False  # True: the server made its directory itself, and only it knows where
        if self.as_root and not _reachable_by_postgres(state_dir):
            # e.g. under pytest's root-only tmp dirs: keep the cluster where the postgres user can reach it
            state_dir = Path(tempfile.mkdtemp(prefix="matchenv-pg-", dir="/tmp"))
            self.own_dir = True
        self.state_dir = state_dir.resolve()
        self.data_dir = self.state_dir / "data"
        self.log_file = self.state_dir / "postgres.log"
        self.port = port or free_port()
        self.bin = _pg_bin()

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/tmp")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pod_url(self, database: str, host: str) -> str:
        """The URL of ``database`` for pods, through ``host`` (e.g. a Service name) on the default port."""
        return f"postgresql://postgres:{quote(self.pod_password, safe='')}@{host}:5432/{database}"

    def start(self, timeout: float = 60) -> PostgresServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.state_dir, "postgres", "postgres")
        if not (self.data_dir / "PG_VERSION").exists():
            done = self._run(str(self.bin / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                             "--no-sync", "-E", "UTF8")
            if done.returncode != 0:
                raise DatabaseStartError(f"initdb failed:\n{done.stderr[-2000:]}")
        listen = "127.0.0.1" + (f",{self.pod_network[0]}" if self.pod_network else "")
        if self.pod_network:
            hba = self.data_dir / "pg_hba.conf"
            rule = f"host all all {self.pod_network[1]} scram-sha-256"
            if rule not in hba.read_text():
                with hba.open("a") as file:
                    file.write(f"# pods on the real node\n{rule}\n")
        options = f"-p {self.port} -k {self.state_dir} -c listen_addresses={listen} -c fsync=off"
        done = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(self.log_file),
                         "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)
        if done.returncode != 0:
            raise DatabaseStartError(f"pg_ctl start failed:\n{done.stdout[-1000:]}\n{self.log_tail()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.url(), connect_timeout=2, autocommit=True) as conn:
                    if self.pod_network:
                        conn.execute(psycopg.sql.SQL("alter user postgres password {}").format(
                            psycopg.sql.Literal(self.pod_password)))
                    return self
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise DatabaseStartError(f"PostgreSQL did not accept connections:\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server and every backend stopped (SIGSTOP) for the block: connections stay open and the kernel
        still acknowledges them, but no query is answered, as with a hung database host."""
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids = [pid, *(int(p) for p in children)]
        for each in pids:
            os.kill(each, signal.SIGSTOP)
        try:
            yield
        finally:
            for each in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(each, signal.SIGCONT)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing) and return its URL."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Stop for good: as :meth:`stop`, and a directory the server made itself goes with its data (nothing else
        knows it; one left behind per run filled /tmp with 125 MB clusters). A given directory is the caller's."""
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""Process helpers shared by the local services: free ports, dying with the parent, stopping a process group."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: the child gets SIGTERM when the process that started it exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def process_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """TERM the child's process group, KILL it if it is still there after ``timeout`` seconds, and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "condition", every: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError naming
    ``what`` and the last answer). An exception from ``check`` counts as not yet: it may race a restart."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class ChildProcess:
    """A child process in its own process group, dying with its parent, its output appended to ``log_path``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and process_alive(self.proc.pid)

    def stop(self, timeout: float = 30) -> int | None:
        """TERM, then KILL after ``timeout``; the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            stop_process_group(self.proc, timeout=timeout)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        assert self.proc is not None, "not started"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Daemons:
    """The long-running programs of one component (the control plane, a node), by name: each in its own session,
    its output appended to ``<logs_dir>/<name>.log``; they die with this process unless ``detached``. The owner
    records the pids :meth:`spawn` returns, so that a later process can :meth:`terminate` them by pid."""

    def __init__(self, logs_dir: Path, cwd: Path, detached: bool, error: type[Exception]) -> None:
        self.logs_dir = logs_dir
        self.cwd = cwd
        self.detached = detached
        self.error = error
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        with (self.logs_dir / f"{name}.log").open("ab") as log_file:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    cwd=self.cwd, start_new_session=True, env=env,
                                    preexec_fn=None if self.detached else die_with_parent)
        self.procs[name] = proc
        return proc.pid

    def wait(self, check: Callable[[], bool], name: str, deadline: float) -> None:
        """Until ``check`` passes (an exception counts as not yet); ``error`` with the log's tail if any program
        exits or ``deadline`` (monotonic) passes."""
        while time.monotonic() < deadline:
            for proc_name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise self.error(f"{proc_name} exited with code {proc.returncode}:\n{self.log_tail(proc_name)}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise self.error(f"{name} was not ready in time:\n{self.log_tail(name)}")

    def terminate(self, name: str, pid: int, timeout: float) -> None:
        """TERM the program's process group, KILL what is left of it after ``timeout`` seconds."""
        proc = self.procs.pop(name, None)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (proc.poll() is None if proc else process_alive(pid)):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

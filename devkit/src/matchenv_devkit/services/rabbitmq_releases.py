"""Which RabbitMQ a private node runs: this machine's Debian 12 package (3.10), or RabbitMQ 4 from Debian 13's
packages in a root tree of its own (``debootstrap`` of ``trixie`` with ``rabbitmq-server``, made once and cached
under ``~/.cache/matchenv`` keyed by what it was made from), run as a host process in that tree: a private mount
namespace binds the node's state directory at the same path inside and mounts ``/proc``, then ``chroot``. The
network is the host's, so the node listens on loopback like the other."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from matchenv_devkit.cluster.images import content_key, debian_mirror
from matchenv_devkit.cluster.versions import cache_root

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
TRIXIE_PACKAGES = ("rabbitmq-server",)
# inside the node's own mount namespace: its state at the same path in the tree, /proc, then the tree as root
CHROOT_SCRIPT = ('set -e; mkdir -p "$MATCHENV_ROOT$MATCHENV_STATE" "$MATCHENV_ROOT/proc"; '
                 'mount --bind "$MATCHENV_STATE" "$MATCHENV_ROOT$MATCHENV_STATE"; '
                 'mount -t proc proc "$MATCHENV_ROOT/proc"; '
                 f'exec chroot "$MATCHENV_ROOT" /bin/sh -c \'cd "$MATCHENV_STATE" && exec {SERVER}\'')


class ReleaseUnavailable(RuntimeError):
    """The release cannot be run here; the message says what to do."""


@dataclass(frozen=True)
class RabbitMQRelease:
    """A RabbitMQ to run: ``root`` None is this machine's package."""

    series: str  # "3.10", "4.0"
    root: Path | None = None

    def command(self, state_dir: Path) -> tuple[list[str], dict[str, str]]:
        """The argv that runs the server in the foreground, and what it adds to the node's environment."""
        if self.root is None:
            if not Path(SERVER).exists():
                raise ReleaseUnavailable("rabbitmq-server is not installed (run `make system-deps`)")
            return [SERVER], {}
        return (["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", CHROOT_SCRIPT],
                {"MATCHENV_ROOT": str(self.root), "MATCHENV_STATE": str(state_dir)})


HOST = RabbitMQRelease("3.10")


def release(series: str) -> RabbitMQRelease:
    """The release of ``series`` ("3" or "3.10": the host's; "4" or "4.0": Debian 13's, made if missing)."""
    if series in ("3", "3.10"):
        return HOST
    if series in ("4", "4.0"):
        return RabbitMQRelease("4.0", ensure_trixie_root())
    raise ReleaseUnavailable(f"no RabbitMQ {series!r} here: 3.10 (Debian 12's) or 4.0 (Debian 13's)")


def default_series() -> str:
    """``MATCHENV_RABBITMQ`` (3 or 4), else 4."""
    return os.environ.get("MATCHENV_RABBITMQ", "4")


def ensure_trixie_root(timeout: float = 1200) -> Path:
    """Debian 13 with rabbitmq-server, in the cache (made now when missing: about 1.5 min, 370 MB)."""
    mirror = debian_mirror()
    home = cache_root() / f"rabbitmq-trixie-{content_key(['trixie', *TRIXIE_PACKAGES, mirror])}"
    root = home / "root"
    if (root / SERVER.lstrip("/")).exists():
        return root
    if shutil.which("debootstrap") is None:
        raise ReleaseUnavailable("debootstrap is not installed (make system-deps installs it)")
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        tree = Path(tmp) / "root"
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(TRIXIE_PACKAGES)}",
                                 "trixie", str(tree), mirror], capture_output=True, text=True, timeout=timeout,
                                check=False)
        if result.returncode != 0:
            raise ReleaseUnavailable(f"debootstrap of trixie with rabbitmq-server failed: {result.stderr[-2000:]}")
        for leftover in ("var/cache/apt", "var/lib/apt/lists"):
            for child in (tree / leftover).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        tree.rename(root)  # whole or not at all
    print(f"[rabbitmq] Debian 13's RabbitMQ in {root} ({time.monotonic() - started:.0f}s)")
    return root

"""Which RabbitMQ a private node runs: this machine's Debian 12 package (3.10), or RabbitMQ 4 from Debian 13's
packages in a root tree of its own (``debootstrap`` of ``trixie`` with ``rabbitmq-server``, made once and cached
under ``~/.cache/matchenv`` keyed by what it was made from), run as a host process in that tree: a private mount
namespace binds the node's state directory at the same path inside and mounts ``/proc``, then ``chroot``. The
network is the host's, so the node listens on loopback like the other."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from matchenv_devkit.cluster.images import ImageError, trixie_root

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
# inside the node's own mount namespace: its state at the same path in the tree, /proc, then the tree as root and
# the program given as the script's arguments
CHROOT_SCRIPT = ('set -e; mkdir -p "$MATCHENV_ROOT$MATCHENV_STATE" "$MATCHENV_ROOT/proc"; '
                 'mount --bind "$MATCHENV_STATE" "$MATCHENV_ROOT$MATCHENV_STATE"; '
                 'mount -t proc proc "$MATCHENV_ROOT/proc"; '
                 'exec chroot "$MATCHENV_ROOT" /bin/sh -c \'cd "$MATCHENV_STATE" && exec "$@"\' sh "$@"')


class ReleaseUnavailable(RuntimeError):
    """The release cannot be run here; the message says what to do."""


@dataclass(frozen=True)
class RabbitMQRelease:
    """A RabbitMQ to run: ``root`` None is this machine's package."""

    series: str  # "3.10", "4.0"
    root: Path | None = None

    def command(self, state_dir: Path, program: str = SERVER, *args: str) -> tuple[list[str], dict[str, str]]:
        """The argv that runs ``program`` (the server, in the foreground, or e.g. :data:`CTL`) of this release, and
        what it adds to the node's environment."""
        if self.root is None:
            if not Path(program).exists():
                raise ReleaseUnavailable("rabbitmq-server is not installed (run `make system-deps`)")
            return [program, *args], {}
        return (["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", CHROOT_SCRIPT, "sh", program,
                 *args], {"MATCHENV_ROOT": str(self.root), "MATCHENV_STATE": str(state_dir)})


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


def ensure_trixie_root() -> Path:
    """Debian 13 with rabbitmq-server, in the cache (made now when missing: about 1.5 min, 370 MB)."""
    try:
        return trixie_root()
    except ImageError as exc:
        raise ReleaseUnavailable(str(exc)) from exc

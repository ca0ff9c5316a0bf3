"""Container images for the real node, built here without a registry or a Docker engine, cached by content.

* ``base``: a Debian root filesystem made by ``debootstrap`` (Python 3.11 and venv) → the ``BASE_IMAGE`` of the
  project's ``Dockerfile``, standing in for the public ``python:3.11-slim`` that cannot be pulled here;
* ``matchenv``: the project's ``Dockerfile`` as written, built by ``buildah bud`` on that base;
* ``pause``: the sandbox image containerd needs for every pod, from Kubernetes' own ``pause.c``;
* ``coredns``: the cached CoreDNS binary alone, for the cluster DNS Deployment;
* ``postgres``: Debian's package on the same base, from ``devkit/images/postgres/Dockerfile``, taking the settings
  the public image takes (the local databases);
* ``rabbitmq``: RabbitMQ 4.0 from Debian 13's packages (the cached ``trixie`` root :func:`trixie_root` makes, which
  the host-process RabbitMQ 4 node also runs), from ``devkit/images/rabbitmq/Dockerfile`` (the manifests' broker).

Each image is exported once to ``~/.cache/matchenv/images/<name>-<key>.tar`` (a docker-archive carrying the name
the node uses) where ``key`` hashes every input; a warm run finds the archives and builds nothing. buildah keeps its
own storage under the same cache directory.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matchenv_devkit.cluster.versions import COREDNS_VERSION, KUBERNETES_VERSION, NodeBinaries, cache_root

Progress = Callable[[str], None]

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PROJECT_IMAGE = "docker.io/library/matchenv:0.1.0"
PAUSE_IMAGE = "localhost/matchenv/pause:3.10"
COREDNS_IMAGE = f"localhost/matchenv/coredns:{COREDNS_VERSION}"
BASE_IMAGE = f"localhost/matchenv/debian-python:{DEBIAN_SUITE}"
RABBITMQ_SUITE = "trixie"  # RabbitMQ 4.0.5; Debian 12 has only 3.10
RABBITMQ_PACKAGES = ("rabbitmq-server",)
RABBITMQ_IMAGE = f"localhost/matchenv/rabbitmq:{RABBITMQ_SUITE}"
RABBITMQ_BASE_IMAGE = f"localhost/matchenv/debian-rabbitmq:{RABBITMQ_SUITE}"
POSTGRES_IMAGE = f"localhost/matchenv/postgres:{DEBIAN_SUITE}"
BUILD_CA = "/run/matchenv-build-ca.crt"  # where a build step finds this machine's CA bundle
REPO_ROOT = Path(__file__).resolve().parents[4]  # the repository (the dev kit is installed from it, editable)
# What the project's image is built from: everything the Dockerfile reads.
PROJECT_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements.lock", "src")


class ImageError(RuntimeError):
    """An image could not be built; the message names the step and shows its output."""


def _stderr_progress(message: str) -> None:
    print(f"[matchenv images] {message}", file=sys.stderr, flush=True)


def content_key(parts: Iterable[bytes | str]) -> str:
    """A short hash of the inputs, in order."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def tree_inputs(root: Path, names: Sequence[str]) -> list[bytes | str]:
    """Paths and contents of the named files and directories under ``root`` (bytecode caches skipped)."""
    parts: list[bytes | str] = []
    for name in names:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts:
                continue
            parts += [str(file.relative_to(root)), file.read_bytes()]
    return parts


def empty_dirs(root: Path, names: Sequence[str]) -> None:
    """Delete what the directories ``names`` under ``root`` hold (apt's caches and lists, logs), keeping them."""
    for name in names:
        for child in (root / name).glob("*"):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def debian_mirror(sources: Sequence[Path] = (Path("/etc/apt/sources.list.d/debian.sources"),
                                            Path("/etc/apt/sources.list"))) -> str:
    """The Debian mirror apt on this machine uses (deb822 ``URIs:`` or a ``deb`` line), else deb.debian.org."""
    for source in sources:
        if not source.exists():
            continue
        text = source.read_text()
        match = re.search(r"^URIs:\s*(\S+)", text, re.MULTILINE) or re.search(r"^deb\s+(?:\[[^]]*]\s+)?(\S+)",
                                                                              text, re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def trixie_root(timeout: float = 1200) -> Path:
    """Debian 13 with rabbitmq-server in the cache (made now when missing: about 1.5 min, 370 MB), keyed by what
    it is made from; :class:`ImageError` says why it could not be made."""
    mirror = debian_mirror()
    home = cache_root() / f"rabbitmq-trixie-{content_key([RABBITMQ_SUITE, *RABBITMQ_PACKAGES, mirror])}"
    root = home / "root"
    if (root / "usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        return root
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (make system-deps installs it)")
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        tree = Path(tmp) / "root"
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(RABBITMQ_PACKAGES)}",
                                 RABBITMQ_SUITE, str(tree), mirror], capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise ImageError(f"debootstrap of {RABBITMQ_SUITE} with rabbitmq-server failed: {result.stderr[-2000:]}")
        empty_dirs(tree, ("var/cache/apt", "var/lib/apt/lists"))
        try:
            tree.rename(root)  # whole or not at all
        except OSError:  # another process (make test's background build, a test) made it meanwhile
            if not (root / "usr/lib/rabbitmq/bin/rabbitmq-server").exists():
                raise
            return root
    print(f"[rabbitmq] Debian 13's RabbitMQ in {root} ({time.monotonic() - started:.0f}s)", file=sys.stderr)
    return root


@dataclass(frozen=True)
class BuiltImage:
    name: str
    archive: Path

    @property
    def size_mb(self) -> float:
        return self.archive.stat().st_size / 1e6


class ImageBuilder:
    """Builds (or finds cached) the node's images; :meth:`all` returns them ready for ``ctr images import``."""

    def __init__(self, root: Path = REPO_ROOT, binaries: NodeBinaries | None = None, cache: Path | None = None,
                 progress: Progress = _stderr_progress) -> None:
        self.root = root
        self.binaries = binaries or NodeBinaries.default()
        self.cache = cache or cache_root() / "images"
        self.progress = progress
        self.storage = self.cache / "buildah"

    # -- the images --------------------------------------------------------------------------------------------
    def all(self) -> list[BuiltImage]:
        return [*self.workloads(), self.rabbitmq(), self.service("postgres", POSTGRES_IMAGE)]

    def workloads(self) -> list[BuiltImage]:
        """What a node whose broker and database are host processes runs: pause, CoreDNS and the project's image."""
        return [self.pause(), self.coredns(), self.project()]

    def rabbitmq(self) -> BuiltImage:
        """``devkit/images/rabbitmq`` on Debian 13's RabbitMQ 4 root (the same tree the host-process node runs)."""
        root = trixie_root()
        base = f"{RABBITMQ_BASE_IMAGE}-{root.parent.name}"
        context = self.root / "devkit" / "images" / "rabbitmq"

        def build(_workdir: Path) -> None:
            if not self._buildah_ok("inspect", "--type", "image", base):
                self._image_of_tree(base, root)
            self._bud(context, RABBITMQ_IMAGE, base)

        return self._cached("rabbitmq", RABBITMQ_IMAGE, [base, *tree_inputs(context, ["."])], build)

    @functools.cached_property
    def base_name(self) -> str:
        """The Debian + Python base image's name, keyed by what debootstrap is given (an input of the images on it)."""
        return f"{BASE_IMAGE}-{content_key([DEBIAN_SUITE, *BASE_PACKAGES, debian_mirror()])}"

    def ensure_base(self) -> str:
        """The base image in buildah's storage, made now if missing (only a build needs it); returns its name."""
        name = self.base_name
        if self._buildah_ok("inspect", "--type", "image", name):
            return name
        if shutil.which("debootstrap") is None:
            raise ImageError("debootstrap is not installed (make system-deps installs it)")
        mirror = debian_mirror()
        started = time.monotonic()
        self.progress(f"debootstrap {DEBIAN_SUITE} ({', '.join(BASE_PACKAGES)}) from {mirror} ...")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            rootfs = Path(tmp) / "rootfs"
            self._run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE,
                       str(rootfs), mirror], "debootstrap", timeout=1200)
            empty_dirs(rootfs, ("var/cache/apt", "var/lib/apt/lists", "var/log"))
            self._image_of_tree(name, rootfs)
        self.progress(f"base image {name} built in {time.monotonic() - started:.0f}s")
        return name

    def pause(self) -> BuiltImage:
        source = self._gomodcache() / f"k8s.io/kubernetes@{KUBERNETES_VERSION}/build/pause/linux/pause.c"
        if not source.exists():
            raise ImageError(f"Kubernetes' pause.c was not found at {source} (the node build fetches the module)")
        code = source.read_bytes()

        def build(workdir: Path) -> None:
            binary = workdir / "pause"
            self._run(["gcc", "-Os", "-static", "-Wall", f'-DVERSION="{KUBERNETES_VERSION}-matchenv"', "-o",
                       str(binary), str(source)], "gcc pause.c")
            self._scratch_image(PAUSE_IMAGE, {binary: "/pause"}, ["--entrypoint", '["/pause"]', "--user", "65535"])

        return self._cached("pause", PAUSE_IMAGE, [code, KUBERNETES_VERSION], build)

    def coredns(self) -> BuiltImage:
        binary = self.binaries.path("coredns")

        def build(_workdir: Path) -> None:
            self._scratch_image(COREDNS_IMAGE, {binary: "/coredns"}, ["--entrypoint", '["/coredns"]',
                                                                      "--user", "65532"])

        return self._cached("coredns", COREDNS_IMAGE, [COREDNS_VERSION, binary.read_bytes()], build)

    def project(self) -> BuiltImage:
        """The project's Dockerfile, as written, on the local base image."""
        inputs = [self.base_name, *tree_inputs(self.root, PROJECT_INPUTS)]

        def build(_workdir: Path) -> None:
            self._bud(self.root, PROJECT_IMAGE)

        return self._cached("matchenv", PROJECT_IMAGE, inputs, build)

    def service(self, label: str, name: str) -> BuiltImage:
        """One of the dev kit's service images: ``devkit/images/<label>/Dockerfile`` on the local base image."""
        context = self.root / "devkit" / "images" / label

        def build(_workdir: Path) -> None:
            self._bud(context, name)

        return self._cached(label, name, [self.base_name, *tree_inputs(context, ["."])], build)

    def _bud(self, context: Path, name: str, base: str | None = None) -> None:
        """``buildah bud`` of ``context``'s Dockerfile with ``BASE_IMAGE`` the local base (made if missing), on
        the host's network for package downloads (apt, pip), which trust the CA bundle this machine's pip uses (a
        proxy may re-sign TLS here). The mounts are build-time only, never in the image."""
        base = base or self.ensure_base()
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            pip_conf = Path(tmp) / "pip.conf"
            bundle = _pip_cert_bundle()
            # the bundle is mounted beside, not over, the image's /etc/ssl/certs: packages write there (ssl-cert)
            pip_conf.write_text(f"[global]\ncert = {BUILD_CA}\n" if bundle else "[global]\n")
            volumes = ["--volume", f"{pip_conf}:/etc/pip.conf:ro"]
            if bundle:
                volumes += ["--volume", f"{Path(bundle).resolve()}:{BUILD_CA}:ro"]
            self._buildah("bud", "--isolation", "chroot", "--network", "host", "--layers=false",
                          "--build-arg", f"BASE_IMAGE={base}", *volumes, "--tag", name,
                          "--file", str(context / "Dockerfile"), str(context), timeout=1800, label="buildah bud")

    # -- helpers -----------------------------------------------------------------------------------------------
    def _cached(self, label: str, name: str, inputs: Sequence[bytes | str],
                build: Callable[[Path], None]) -> BuiltImage:
        archive = self.cache / f"{label}-{content_key(inputs)}.tar"
        if archive.exists():
            return BuiltImage(name, archive)
        self.cache.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.progress(f"building image {name} ...")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            build(Path(tmp))
            partial = Path(tmp) / "image.tar"
            self._buildah("push", name, f"docker-archive:{partial}:{name}", label=f"export {name}")
            for stale in self.cache.glob(f"{label}-*.tar"):
                stale.unlink()
            partial.rename(archive)
        image = BuiltImage(name, archive)
        self.progress(f"image {name} built in {time.monotonic() - started:.0f}s ({image.size_mb:.0f} MB)")
        return image

    def _image_of_tree(self, name: str, rootfs: Path) -> None:
        """An image ``name`` whose root filesystem is a copy of the Debian tree ``rootfs``."""
        def fill(container: str) -> None:
            mount = self._buildah("mount", container, label="buildah mount").strip()
            self._run(["cp", "-a", f"{rootfs}/.", mount], "copy the root filesystem")
            self._buildah("umount", container, label="buildah umount")

        self._from_scratch(name, fill, ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                        "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash"])

    def _scratch_image(self, name: str, files: dict[Path, str], config: Sequence[str]) -> None:
        def fill(container: str) -> None:
            for source, dest in files.items():
                self._buildah("copy", "--chmod", "0755", container, str(source), dest, label="buildah copy")

        self._from_scratch(name, fill, config)

    def _from_scratch(self, name: str, fill: Callable[[str], None], config: Sequence[str]) -> None:
        """An image ``name`` from an empty working container that ``fill`` populates; the container is removed
        whatever happens."""
        container = self._buildah("from", "scratch", label="buildah from").strip()
        try:
            fill(container)
            self._buildah("config", *config, container, label="buildah config")
            self._buildah("commit", "--rm", container, name, label="buildah commit")
        except BaseException:
            self._buildah_ok("rm", container)
            raise

    def _buildah_cmd(self, *args: str) -> list[str]:
        if shutil.which("buildah") is None:
            raise ImageError("buildah is not installed (make system-deps installs it)")
        return ["buildah", "--root", str(self.storage), "--runroot", str(self.storage / "run"),
                "--storage-driver", "overlay", *args]

    def _buildah(self, *args: str, label: str, timeout: float = 600) -> str:
        return self._run(self._buildah_cmd(*args), label, timeout=timeout)

    def _buildah_ok(self, *args: str) -> bool:
        return subprocess.run(self._buildah_cmd(*args), capture_output=True, timeout=120).returncode == 0

    @staticmethod
    def _run(cmd: Sequence[str], label: str, timeout: float = 600) -> str:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "BUILDAH_ISOLATION": "chroot"})
        if proc.returncode != 0:
            raise ImageError(f"{label} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return proc.stdout

    @staticmethod
    def _gomodcache() -> Path:
        go = shutil.which("go") or "/usr/local/go/bin/go"
        try:
            out = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            out = ""
        return Path(out.strip()) if out.strip() else Path.home() / "go/pkg/mod"


def _pip_cert_bundle() -> str | None:
    """The CA bundle pip on this machine is told to use (``PIP_CERT`` or ``pip config``), if any."""
    explicit = os.environ.get("PIP_CERT")
    if explicit:
        return explicit
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True,
                          text=True, timeout=60)
    value = proc.stdout.strip().strip("'\"")
    return value if proc.returncode == 0 and value else None

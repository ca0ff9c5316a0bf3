"""Build the pinned Kubernetes control plane and etcd from their Go modules, cached outside the repo.

The Kubernetes module is built as a dependency of a small wrapper module: Go ignores a dependency's own
``replace`` directives, so the wrapper replaces every ``k8s.io/*`` staging module with its published ``v0.Y.Z``
twin. etcd is built from a second wrapper whose ``main`` calls ``etcdmain.Main``. A second call finds the
binaries in the cache and returns at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from matchenv_devkit.cluster.versions import (
    COMPONENTS,
    ETCD_VERSION,
    KUBERNETES_VERSION,
    ControlPlaneBinaries,
    cache_root,
)

Progress = Callable[[str], None]

_STAGING_RE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/src/k8s\.io/[\w.-]+\s*$", re.MULTILINE)


class BuildError(RuntimeError):
    """The control plane could not be built; the message names the failing step."""


def _stderr_progress(message: str) -> None:
    print(f"[matchenv build] {message}", file=sys.stderr, flush=True)


def staging_version(kubernetes_version: str) -> str:
    """``v1.36.3`` → ``v0.36.3``: the tag the staging modules are published under."""
    major_minor_patch = kubernetes_version.removeprefix("v").split(".")
    if len(major_minor_patch) != 3 or major_minor_patch[0] != "1":
        raise ValueError(f"not a Kubernetes 1.x release: {kubernetes_version!r}")
    return f"v0.{major_minor_patch[1]}.{major_minor_patch[2]}"


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """The staging modules that a Kubernetes ``go.mod`` replaces with ``./staging/src/...`` paths."""
    return sorted(set(_STAGING_RE.findall(kubernetes_gomod)))


def wrapper_gomod(kubernetes_version: str, modules: Sequence[str], go_version: str) -> str:
    """The wrapper module's go.mod: require Kubernetes, replace each staging module with its published twin."""
    sv = staging_version(kubernetes_version)
    lines = [
        "module matchenv.local/controlplane",
        "",
        f"go {go_version}",
        "",
        f"require k8s.io/kubernetes {kubernetes_version}",
        "",
        "replace (",
        *(f"\t{m} => {m} {sv}" for m in modules),
        ")",
        "",
    ]
    return "\n".join(lines)


def _version_ldflags(kubernetes_version: str) -> str:
    _, minor, _ = kubernetes_version.removeprefix("v").split(".")
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={kubernetes_version}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(["-s", "-w", *flags])


class _Go:
    """Runs the go command with a local toolchain, no cgo, and a shared module and build cache."""

    def __init__(self, progress: Progress) -> None:
        go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
        if go is None:
            raise BuildError("the Go toolchain was not found on PATH (nor /usr/local/go/bin/go)")
        self.go = go
        self.progress = progress
        self.env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}

    def version(self) -> str:
        out = self.output(["env", "GOVERSION"], cwd=Path.cwd()).strip()
        match = re.match(r"go(\d+\.\d+)", out)
        if not match:
            raise BuildError(f"could not read the Go version from {out!r}")
        return match.group(1)

    def output(self, args: Sequence[str], cwd: Path) -> str:
        proc = subprocess.run([self.go, *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise BuildError(f"go {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc.stdout

    def build(self, args: Sequence[str], cwd: Path, label: str) -> None:
        """``go build -v``: counts compiled packages to report progress, keeps the tail of the log for errors."""
        proc = subprocess.Popen(
            [self.go, "build", "-v", *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        tail: deque[str] = deque(maxlen=60)
        count = 0
        started = time.monotonic()
        last_report = started
        for line in proc.stdout:
            tail.append(line.rstrip())
            count += 1
            now = time.monotonic()
            if now - last_report >= 30:
                self.progress(f"{label}: {count} packages compiled, {now - started:.0f}s")
                last_report = now
        rc = proc.wait()
        if rc != 0:
            raise BuildError(f"building {label} failed ({rc}):\n" + "\n".join(tail))
        self.progress(f"{label}: done, {count} packages, {time.monotonic() - started:.0f}s")


def _build_kubernetes(go: _Go, workdir: Path, out: Path, kubernetes_version: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    info = json.loads(go.output(["mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes_version}"], cwd=workdir))
    modules = staging_modules(Path(info["GoMod"]).read_text())
    if not modules:
        raise BuildError(f"no staging modules found in {info['GoMod']}")
    (workdir / "go.mod").write_text(wrapper_gomod(kubernetes_version, modules, go.version()))
    tools = ["//go:build tools", "", "package tools", "", "import ("]
    tools += [f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in COMPONENTS]
    (workdir / "tools.go").write_text("\n".join([*tools, ")", ""]))
    go.progress(f"resolving modules for Kubernetes {kubernetes_version} ({len(modules)} staging modules replaced)")
    go.output(["mod", "tidy"], cwd=workdir)
    args = ["-trimpath", "-ldflags", _version_ldflags(kubernetes_version), "-o", f"{out}/"]
    go.build([*args, *(f"k8s.io/kubernetes/cmd/{c}" for c in COMPONENTS)], cwd=workdir, label="kubernetes")


def _build_etcd(go: _Go, workdir: Path, out: Path, etcd_version: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "go.mod").write_text(
        f"module matchenv.local/etcd\n\ngo {go.version()}\n\nrequire go.etcd.io/etcd/server/v3 {etcd_version}\n"
    )
    (workdir / "main.go").write_text(
        "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\n"
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    go.progress(f"resolving modules for etcd {etcd_version}")
    go.output(["mod", "tidy"], cwd=workdir)
    go.build(["-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), "."], cwd=workdir, label="etcd")


def ensure_binaries(
    binaries: ControlPlaneBinaries | None = None,
    progress: Progress = _stderr_progress,
    force: bool = False,
) -> ControlPlaneBinaries:
    """Return the cached control-plane binaries, building whatever is missing first."""
    binaries = binaries or ControlPlaneBinaries.default()
    missing = binaries.missing()
    if not missing and not force:
        return binaries
    started = time.monotonic()
    progress(f"building {', '.join(missing or binaries.all_names)} into {binaries.bin_dir} (cold builds take a while)")
    go = _Go(progress)
    src = cache_root() / "src"
    staging = binaries.root / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if force or any(n in COMPONENTS for n in missing):
        _build_kubernetes(go, src / f"kubernetes-{KUBERNETES_VERSION}", staging, KUBERNETES_VERSION)
    if force or "etcd" in missing:
        _build_etcd(go, src / f"etcd-{ETCD_VERSION}", staging, ETCD_VERSION)
    binaries.bin_dir.mkdir(parents=True, exist_ok=True)
    for built in staging.iterdir():
        os.replace(built, binaries.path(built.name))
    shutil.rmtree(staging, ignore_errors=True)
    still_missing = binaries.missing()
    if still_missing:
        raise BuildError(f"build finished but these binaries are missing: {', '.join(still_missing)}")
    progress(f"control plane built in {time.monotonic() - started:.0f}s")
    return binaries

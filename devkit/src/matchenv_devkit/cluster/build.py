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
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from matchenv_devkit.cluster.versions import (
    APISERVER_COMPONENTS,
    COMPONENTS,
    CONTAINERD_COMMANDS,
    CONTAINERD_VERSION,
    COREDNS_VERSION,
    CRI_TOOLS_VERSION,
    ETCD_VERSION,
    HELM_VERSION,
    KEDA_CRDS,
    KEDA_VERSION,
    KIND_VERSION,
    KUBERNETES_VERSION,
    LOCAL_PATH_PROVISIONER_VERSION,
    NODE_COMPONENTS,
    PROMETHEUS_OPERATOR_VERSION,
    RUNC_VERSION,
    TOPOLOGY_CLUSTER_OPERATOR_VERSION,
    TOPOLOGY_OPERATOR_VERSION,
    ApiServerBinaries,
    CachedBinaries,
    ControlPlaneBinaries,
    HelmBinaries,
    KindBinaries,
    NodeBinaries,
    TopologyOperatorBinaries,
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

    def output(self, args: Sequence[str], cwd: Path, check: bool = True) -> str:
        proc = subprocess.run([self.go, *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=1800)
        if check and proc.returncode != 0:
            raise BuildError(f"go {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc.stdout

    def build(self, args: Sequence[str], cwd: Path, label: str, cgo: bool = False) -> None:
        """``go build -v``: counts compiled packages to report progress, keeps the tail of the log for errors."""
        proc = subprocess.Popen(
            [self.go, "build", "-v", *args],
            cwd=cwd,
            env={**self.env, "CGO_ENABLED": "1"} if cgo else self.env,
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


def _kubernetes_wrapper(go: _Go, workdir: Path, kubernetes_version: str, commands: Sequence[str]) -> None:
    """The wrapper module that builds ``k8s.io/kubernetes/cmd/<command>`` for each of ``commands``."""
    workdir.mkdir(parents=True, exist_ok=True)
    info = json.loads(go.output(["mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes_version}"], cwd=workdir))
    modules = staging_modules(Path(info["GoMod"]).read_text())
    if not modules:
        raise BuildError(f"no staging modules found in {info['GoMod']}")
    (workdir / "go.mod").write_text(wrapper_gomod(kubernetes_version, modules, go.version()))
    tools = ["//go:build tools", "", "package tools", "", "import ("]
    tools += [f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in commands]
    (workdir / "tools.go").write_text("\n".join([*tools, ")", ""]))
    go.progress(f"resolving modules for Kubernetes {kubernetes_version} ({len(modules)} staging modules replaced)")
    go.output(["mod", "tidy"], cwd=workdir)


def _build_kubernetes(go: _Go, workdir: Path, out: Path, kubernetes_version: str,
                      commands: Sequence[str] = COMPONENTS, label: str = "kubernetes") -> None:
    _kubernetes_wrapper(go, workdir, kubernetes_version, commands)
    args = ["-trimpath", "-ldflags", _version_ldflags(kubernetes_version), "-o", f"{out}/"]
    go.build([*args, *(f"k8s.io/kubernetes/cmd/{c}" for c in commands)], cwd=workdir, label=label)


def _build_module(go: _Go, workdir: Path, out: Path, module: str, version: str, packages: Sequence[str],
                  label: str, tags: Sequence[str] = (), ldflags: str = "-s -w", cgo: bool = False,
                  replace: dict[str, str] | None = None) -> None:
    """Build ``packages`` (main packages) of ``module@version`` through a wrapper module that requires it (and
    replaces each dependency in ``replace`` by the version given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    gomod = f"module matchenv.local/{label}\n\ngo {go.version()}\n\nrequire {module} {version}\n"
    gomod += "".join(f"\nreplace {dep} => {dep} {pinned}\n" for dep, pinned in (replace or {}).items())
    (workdir / "go.mod").write_text(gomod)
    imports = "".join(f'\t_ "{p}"\n' for p in packages)
    (workdir / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n")
    go.progress(f"resolving modules for {module} {version}")
    go.output(["mod", "tidy"], cwd=workdir)
    args = ["-trimpath", "-ldflags", ldflags, "-o", f"{out}/"]
    if tags:
        args += ["-tags", " ".join(tags)]
    go.build([*args, *packages], cwd=workdir, label=label, cgo=cgo)


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


def _into_cache(binaries: CachedBinaries, build: Callable[[Path], None]) -> None:
    """Build into a staging directory, then move every binary into the cache: a half-done build leaves nothing."""
    staging = binaries.root / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build(staging)
    binaries.bin_dir.mkdir(parents=True, exist_ok=True)
    for built in staging.iterdir():
        os.replace(built, binaries.path(built.name))
    shutil.rmtree(staging, ignore_errors=True)
    still_missing = binaries.missing()
    if still_missing:
        raise BuildError(f"build finished but these binaries are missing: {', '.join(still_missing)}")


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

    def build(staging: Path) -> None:
        if force or any(n in COMPONENTS for n in missing):
            _build_kubernetes(go, src / f"kubernetes-{KUBERNETES_VERSION}", staging, KUBERNETES_VERSION)
        if force or "etcd" in missing:
            _build_etcd(go, src / f"etcd-{ETCD_VERSION}", staging, ETCD_VERSION)

    _into_cache(binaries, build)
    progress(f"control plane built in {time.monotonic() - started:.0f}s")
    return binaries


def ensure_apiserver_binaries(
    binaries: ApiServerBinaries | None = None,
    progress: Progress = _stderr_progress,
) -> ApiServerBinaries:
    """Return the cached API server and kubectl of another release (the oldest supported), building them first."""
    binaries = binaries or ApiServerBinaries.for_version()
    if not binaries.missing():
        return binaries
    started = time.monotonic()
    progress(f"building kube-apiserver and kubectl {binaries.version} into {binaries.bin_dir}")
    go = _Go(progress)

    def build(staging: Path) -> None:
        _build_kubernetes(go, cache_root() / "src" / f"kubernetes-{binaries.version}", staging, binaries.version,
                          APISERVER_COMPONENTS, label=f"kube-apiserver {binaries.version}")

    _into_cache(binaries, build)
    progress(f"API server {binaries.version} built in {time.monotonic() - started:.0f}s")
    return binaries


def ensure_helm(binaries: HelmBinaries | None = None, progress: Progress = _stderr_progress,
                force: bool = False) -> HelmBinaries:
    """Return the cached helm, building it from its Go module first."""
    binaries = binaries or HelmBinaries.default()
    if not binaries.missing() and not force:
        return binaries
    started = time.monotonic()
    progress(f"building helm {HELM_VERSION} into {binaries.bin_dir}")
    go = _Go(progress)
    module = "helm.sh/helm/v4"

    def build(staging: Path) -> None:
        _build_module(go, cache_root() / "src" / f"helm-{HELM_VERSION}", staging, module, HELM_VERSION,
                      [f"{module}/cmd/helm"], label="helm",
                      ldflags=f"-s -w -X {module}/internal/version.version={HELM_VERSION}")

    _into_cache(binaries, build)
    progress(f"helm built in {time.monotonic() - started:.0f}s")
    return binaries


MONITORING_CRDS = ("podmonitors", "servicemonitors", "prometheusrules")


def ensure_monitoring_crds(progress: Progress = _stderr_progress) -> Path:
    """The Prometheus Operator's PodMonitor, ServiceMonitor and PrometheusRule CRDs, as its Go module ships them
    (example/prometheus-operator-crd), cached; the directory holding them."""
    return _module_files("github.com/prometheus-operator/prometheus-operator", PROMETHEUS_OPERATOR_VERSION,
                         "example/prometheus-operator-crd",
                         [f"monitoring.coreos.com_{kind}.yaml" for kind in MONITORING_CRDS],
                         cache_root() / f"prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}" / "crds", progress)


def ensure_keda_crds(progress: Progress = _stderr_progress) -> Path:
    """KEDA's ScaledObject and TriggerAuthentication CRDs, as its Go module ships them (config/crd/bases), cached;
    the directory holding them."""
    return _module_files("github.com/kedacore/keda/v2", KEDA_VERSION, "config/crd/bases",
                         [f"keda.sh_{kind}.yaml" for kind in KEDA_CRDS],
                         cache_root() / f"keda-{KEDA_VERSION}" / "crds", progress)


def module_dir(module: str, version: str, progress: Progress = _stderr_progress) -> Path:
    """The unpacked source of ``module@version`` in the module cache, downloaded first when missing."""
    answer = json.loads(_Go(progress).output(["mod", "download", "-json", f"{module}@{version}"], cwd=cache_root()))
    if answer.get("Error") or not answer.get("Dir"):
        raise BuildError(f"could not download {module}@{version}: {answer.get('Error')}")
    return Path(answer["Dir"])


def _module_files(module: str, version: str, folder: str, names: Sequence[str], out: Path,
                  progress: Progress) -> Path:
    """``names`` from ``folder`` of a Go module's source, as the module proxy serves it, cached in ``out``. Read from
    the module's zip: a module whose go.mod asks for a newer Go is still downloaded, only not unpacked."""
    files = [out / name for name in names]
    if all(f.exists() for f in files):
        return out
    progress(f"downloading {module} {version} for {', '.join(names)}")
    go = _Go(progress)
    # a failure (e.g. "requires go >= …") is in the JSON answer; the zip may be there all the same
    said = go.output(["mod", "download", "-json", f"{module}@{version}"], cwd=cache_root(), check=False)
    try:
        answer = json.loads(said)
    except ValueError:
        raise BuildError(f"could not download {module}@{version}: {said[-2000:]}") from None
    archive = answer.get("Zip")
    if not archive or not Path(archive).exists():
        raise BuildError(f"could not download {module}@{version}: {answer.get('Error')}")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(archive) as source:
        for name in names:
            (staging / name).write_bytes(source.read(f"{module}@{version}/{folder}/{name}"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return out


def ensure_topology_operator(progress: Progress = _stderr_progress) -> TopologyOperatorBinaries:
    """The messaging-topology-operator built from its Go module (its cluster-operator dependency replaced, see
    versions.py) and its CRDs, cached."""
    binaries = TopologyOperatorBinaries.default()
    if not binaries.missing():
        return binaries
    started = time.monotonic()
    progress(f"building the messaging-topology-operator {TOPOLOGY_OPERATOR_VERSION} into {binaries.root}")
    go = _Go(progress)
    # the replacing version's checksum is not in the checksum database
    go.env["GONOSUMDB"] = "github.com/rabbitmq"
    module, cluster_operator = ("github.com/rabbitmq/messaging-topology-operator",
                                "github.com/rabbitmq/cluster-operator/v2")

    def build(staging: Path) -> None:
        _build_module(go, cache_root() / "src" / f"topology-operator-{TOPOLOGY_OPERATOR_VERSION}", staging, module,
                      TOPOLOGY_OPERATOR_VERSION, [f"{module}/cmd"], label="topology-operator",
                      replace={cluster_operator: TOPOLOGY_CLUSTER_OPERATOR_VERSION})
        os.replace(staging / "cmd", staging / "topology-operator")

    crds = binaries.crd_dir.with_name("crds.partial")
    shutil.rmtree(crds, ignore_errors=True)
    crds.mkdir(parents=True)
    for name, version, path in ((module, TOPOLOGY_OPERATOR_VERSION, "config/crd/bases"),
                                (cluster_operator, TOPOLOGY_CLUSTER_OPERATOR_VERSION, "config/crd/bases")):
        for crd in sorted((module_dir(name, version, progress) / path).glob("*.yaml")):
            shutil.copyfile(crd, crds / crd.name)
    shutil.rmtree(binaries.crd_dir, ignore_errors=True)
    os.replace(crds, binaries.crd_dir)
    _into_cache(binaries, build)
    progress(f"messaging-topology-operator built in {time.monotonic() - started:.0f}s")
    return binaries


def ensure_node_binaries(
    binaries: NodeBinaries | None = None,
    progress: Progress = _stderr_progress,
    force: bool = False,
) -> NodeBinaries:
    """Return the cached node binaries (kubelet, kube-proxy, containerd, runc, CoreDNS), building what is missing.
    runc is built with cgo against Debian's libseccomp-dev (``make system-deps``)."""
    binaries = binaries or NodeBinaries.default()
    missing = binaries.missing()
    if not missing and not force:
        return binaries
    started = time.monotonic()
    wanted = set(binaries.all_names if force else missing)
    progress(f"building {', '.join(sorted(wanted))} into {binaries.bin_dir} (cold builds take a while)")
    go = _Go(progress)
    src = cache_root() / "src"

    def build(staging: Path) -> None:
        if wanted & set(NODE_COMPONENTS):
            _build_kubernetes(go, src / f"kubernetes-node-{KUBERNETES_VERSION}", staging, KUBERNETES_VERSION,
                              NODE_COMPONENTS, label="kubelet, kube-proxy")
        if wanted & set(CONTAINERD_COMMANDS):
            module = "github.com/containerd/containerd/v2"
            _build_module(go, src / f"containerd-{CONTAINERD_VERSION}", staging, module, CONTAINERD_VERSION,
                          [f"{module}/cmd/{c}" for c in CONTAINERD_COMMANDS], label="containerd",
                          tags=("no_btrfs", "no_devmapper", "no_zfs"),
                          ldflags=f"-s -w -X {module}/version.Version={CONTAINERD_VERSION}")
        if "runc" in wanted:
            _build_module(go, src / f"runc-{RUNC_VERSION}", staging, "github.com/opencontainers/runc", RUNC_VERSION,
                          ["github.com/opencontainers/runc"], label="runc", tags=("seccomp",), cgo=True,
                          ldflags=f"-s -w -X main.version={RUNC_VERSION.removeprefix('v')}")
        if "coredns" in wanted:
            _build_module(go, src / f"coredns-{COREDNS_VERSION}", staging, "github.com/coredns/coredns",
                          COREDNS_VERSION, ["github.com/coredns/coredns"], label="coredns")

    _into_cache(binaries, build)
    progress(f"node built in {time.monotonic() - started:.0f}s")
    return binaries


def ensure_kind_binaries(binaries: KindBinaries | None = None, progress: Progress = _stderr_progress,
                         force: bool = False) -> KindBinaries:
    """Return the cached kind, kubeadm, crictl and local-path provisioner, building what is missing."""
    binaries = binaries or KindBinaries.default()
    missing = binaries.all_names if force else tuple(binaries.missing())
    if not missing:
        return binaries
    started = time.monotonic()
    progress(f"building {', '.join(missing)} into {binaries.bin_dir}")
    go = _Go(progress)
    src = cache_root() / "src"

    def build(staging: Path) -> None:
        if "kind" in missing:
            _build_module(go, src / f"kind-{KIND_VERSION}", staging, "sigs.k8s.io/kind", KIND_VERSION,
                          ["sigs.k8s.io/kind"], label="kind")
        if "kubeadm" in missing:
            _build_kubernetes(go, src / f"kubernetes-kubeadm-{KUBERNETES_VERSION}", staging, KUBERNETES_VERSION,
                              ("kubeadm",), label="kubeadm")
        if "crictl" in missing:
            _build_module(go, src / f"cri-tools-{CRI_TOOLS_VERSION}", staging, "sigs.k8s.io/cri-tools",
                          CRI_TOOLS_VERSION, ["sigs.k8s.io/cri-tools/cmd/crictl"], label="crictl")
        if "local-path-provisioner" in missing:
            module = "github.com/rancher/local-path-provisioner"
            _build_module(go, src / f"local-path-provisioner-{LOCAL_PATH_PROVISIONER_VERSION}", staging, module,
                          LOCAL_PATH_PROVISIONER_VERSION, [module], label="local-path-provisioner")

    _into_cache(binaries, build)
    progress(f"kind's binaries built in {time.monotonic() - started:.0f}s")
    return binaries

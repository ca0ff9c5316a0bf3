"""``matchenv-dev``: the development kit's command line: a real local control plane and the whole-pipeline demo.
Never part of the ``matchenv`` wheel or image."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import typer

from matchenv_devkit.cluster.versions import CachedBinaries

app = typer.Typer(
    help="matchenv's development kit: a real local Kubernetes control plane and the demo.",
    no_args_is_help=True,
    add_completion=False,
)
cluster_app = typer.Typer(help="A real local Kubernetes control plane for tests and the demo.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
node_app = typer.Typer(help="A real node: kubelet, kube-proxy, containerd, runc, CoreDNS.", no_args_is_help=True)
app.add_typer(node_app, name="node")
images_app = typer.Typer(help="The real node's images, built here without a registry.", no_args_is_help=True)
app.add_typer(images_app, name="images")
kind_app = typer.Typer(help="A kind cluster built here: the project's Docker engine, kind's base and node images.",
                       no_args_is_help=True)
app.add_typer(kind_app, name="kind")


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def default_state_dir() -> Path:
    """Where ``cluster up`` keeps its state: ``$MATCHENV_CLUSTER_DIR`` or ``/tmp/matchenv-cluster``."""
    return Path(os.environ.get("MATCHENV_CLUSTER_DIR", "/tmp/matchenv-cluster"))


@app.command()
def demo(
    state_dir: Path = typer.Option(Path("/tmp/matchenv-demo"), help="Where state and logs go (wiped first)."),
    keep: bool | None = typer.Option(None, "--keep/--no-keep",
                                     help="Keep it running until Ctrl-C (default: when run in a terminal)."),
    node: str = typer.Option("real", "--node", help="'real': worker pods are containers on a real node (needs "
                                                      "root); 'process': they are local processes."),
) -> None:
    """The whole pipeline locally: broker, databases, control plane, operator, prod/dev/staging, matches flowing."""
    from matchenv_devkit.cluster.demo import run_demo

    if node not in {"real", "process"}:
        _echo_err(f"error: --node must be 'real' or 'process', not {node!r}")
        raise typer.Exit(2)
    stay = sys.stdin.isatty() if keep is None else keep
    raise typer.Exit(run_demo(state_dir, stay, lambda m: typer.echo(m), node=node))


@app.command()
def bench(
    state_dir: Path = typer.Option(Path("/tmp/matchenv-bench"), help="Where state and logs go (wiped first)."),
    docs: Path = typer.Option(Path("docs"), help="Where benchmarks.md and benchmarks.png are written."),
    environments: int = typer.Option(500, min=250, help="How many environments the scale measure applies."),
    large: int = typer.Option(2000, min=0, help="How many the large burst applies on matchenv alone (0: none)."),
) -> None:
    """Each measure beside its baseline in one run; writes docs/benchmarks.md and its plot. Says which targets
    were met and which missed (the exit code stays 0: a benchmark is a record, not a test)."""
    from matchenv_devkit.bench.run import run_bench

    measures = run_bench(state_dir, docs, lambda m: typer.echo(m), environments=environments, large=large)
    missed = [t.text for m in measures for t in m.targets if not t.met]
    typer.echo(f"targets missed: {len(missed)}" + "".join(f"\n  {t}" for t in missed))


def _build(ensure: Callable[..., CachedBinaries | Path], force: bool) -> None:
    """Run one of the cached builds; print the directory it filled, or the error and exit 1."""
    from matchenv_devkit.cluster.build import BuildError

    try:
        built = ensure(force=force)
    except BuildError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(str(built.bin_dir if isinstance(built, CachedBinaries) else built))


@cluster_app.command("build")
def cluster_build(force: bool = typer.Option(False, "--force", help="Rebuild even if cached.")) -> None:
    """Build (or find cached) kube-apiserver, controller-manager, scheduler, kubectl and etcd; the oldest supported
    release's kube-apiserver and kubectl (the install is checked against them too); helm (the chart's tests); the
    Prometheus Operator's CRDs (the monitoring component's tests)."""
    from matchenv_devkit.cluster.build import (
        ensure_apiserver_binaries,
        ensure_binaries,
        ensure_helm,
        ensure_monitoring_crds,
    )

    _build(ensure_binaries, force)
    _build(lambda force: ensure_apiserver_binaries(), force)
    _build(ensure_helm, force)
    _build(lambda force: ensure_monitoring_crds(), force)


@node_app.command("build")
def node_build(force: bool = typer.Option(False, "--force", help="Rebuild even if cached.")) -> None:
    """Build (or find cached) the node's binaries from their Go modules; prints their directory."""
    from matchenv_devkit.cluster.build import ensure_node_binaries

    _build(ensure_node_binaries, force)


class NodeKind(StrEnum):
    none = "none"
    real = "real"


@images_app.command("build")
def images_build() -> None:
    """Build (or find cached) the project's image (its Dockerfile on a Debian base made here), pause and CoreDNS;
    prints each image's name, size and archive."""
    from matchenv_devkit.cluster.build import BuildError, ensure_node_binaries
    from matchenv_devkit.cluster.images import ImageBuilder, ImageError
    try:
        built = ImageBuilder(binaries=ensure_node_binaries()).all()
    except (BuildError, ImageError) as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from exc
    for image in built:
        typer.echo(f"{image.name}\t{image.size_mb:.0f} MB\t{image.archive}")


@cluster_app.command("up")
def cluster_up(
    state_dir: Path = typer.Option(default_state_dir(), "--state-dir", help="Where state, logs and kubeconfig go."),
    node: NodeKind = typer.Option(NodeKind.none, "--node",
                                  help="'real': also a node (containerd, runc, kubelet, kube-proxy, CoreDNS; needs "
                                       "root) that runs pods as containers of images built here."),
) -> None:
    """Start the control plane (and a node) in the background; prints the kubeconfig path."""
    from matchenv_devkit.cluster.build import BuildError
    from matchenv_devkit.cluster.cluster import ClusterError, LocalCluster
    from matchenv_devkit.cluster.images import ImageError
    from matchenv_devkit.cluster.nodeconfig import NODE_IP
    from matchenv_devkit.cluster.realnode import NodeError, RealNode

    real = node is NodeKind.real
    cluster = LocalCluster(state_dir, detached=True, log=_echo_err, node_ip=NODE_IP if real else None)
    try:
        cluster.start()
        if real:
            RealNode(cluster, detached=True, log=_echo_err).start()
    except (BuildError, ClusterError, NodeError, ImageError) as exc:
        cluster.stop()
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"export KUBECONFIG={cluster.kubeconfig}")
    typer.echo(f"export PATH={cluster.binaries.bin_dir}:$PATH")


@cluster_app.command("down")
def cluster_down(
    state_dir: Path = typer.Option(default_state_dir(), "--state-dir", help="The state directory of `cluster up`."),
) -> None:
    """Stop a control plane (and its node) started with ``cluster up``; the node leaves nothing behind."""
    from matchenv_devkit.cluster.cluster import LocalCluster
    from matchenv_devkit.cluster.realnode import RealNode

    cluster = LocalCluster.attach(state_dir, log=_echo_err)
    if cluster.state is None:
        _echo_err(f"no cluster recorded in {state_dir}")
        return
    if cluster.node_ip:
        RealNode.attach(cluster, log=_echo_err).stop()
        _echo_err("node stopped: its processes, mounts, network and iptables chains are gone")
    cluster.stop()
    _echo_err("control plane stopped")


@cluster_app.command("status")
def cluster_status(
    state_dir: Path = typer.Option(default_state_dir(), "--state-dir", help="The state directory of `cluster up`."),
) -> None:
    """Say whether the local control plane is running (exit 1 if not)."""
    from matchenv_devkit.cluster.cluster import LocalCluster
    from matchenv_devkit.cluster.realnode import RealNode

    cluster = LocalCluster.attach(state_dir)
    if not cluster.running():
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"running: {cluster.server}  KUBECONFIG={cluster.kubeconfig}")
    if cluster.node_ip:
        node = RealNode.attach(cluster)
        typer.echo(f"node: {'running' if node.running() else 'NOT running'} (logs in {node.logs_dir})")
        if not node.running():
            raise typer.Exit(1)


def default_kind_dir() -> Path:
    """Where ``kind up`` keeps the Docker engine and the kubeconfig: ``$MATCHENV_KIND_DIR`` or /tmp/matchenv-kind."""
    return Path(os.environ.get("MATCHENV_KIND_DIR", "/tmp/matchenv-kind"))


@kind_app.command("build")
def kind_build(force: bool = typer.Option(False, "--force", help="Rebuild even if cached.")) -> None:
    """Build (or find cached) kind, kubeadm, crictl and the local-path provisioner; prints their directory."""
    from matchenv_devkit.cluster.build import ensure_kind_binaries

    _build(ensure_kind_binaries, force)


@kind_app.command("up")
def kind_up(
    state_dir: Path = typer.Option(default_kind_dir(), "--state-dir", help="The engine's data, logs, kubeconfig."),
    name: str = typer.Option("matchenv-e2e", "--name", help="The kind cluster's name."),
) -> None:
    """Start the project's Docker engine, build (or find cached) kind's node image, create the cluster and load
    the project's images (with local stand-ins for the public ones ``overlays/kind`` names); prints what to export."""
    from matchenv_devkit.cluster.build import BuildError
    from matchenv_devkit.cluster.dockerd import DockerEngine, DockerError
    from matchenv_devkit.cluster.images import ImageError
    from matchenv_devkit.cluster.kind import KindCluster, KindError
    from matchenv_devkit.cluster.kindimages import KindImages

    engine = DockerEngine(state_dir, progress=_echo_err)
    try:
        engine.start()
        images = KindImages()
        cluster = KindCluster(engine, state_dir, name=name, progress=_echo_err).create(images.node(engine))
        cluster.load(images.for_overlay())
    except (BuildError, DockerError, ImageError, KindError) as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(f"export DOCKER_HOST={engine.host}")
    typer.echo(f"export KUBECONFIG={cluster.kubeconfig}")


@kind_app.command("down")
def kind_down(
    state_dir: Path = typer.Option(default_kind_dir(), "--state-dir", help="The state directory of `kind up`."),
    name: str = typer.Option("matchenv-e2e", "--name", help="The kind cluster's name."),
    keep_engine: bool = typer.Option(False, "--keep-engine", help="Leave the Docker engine running."),
) -> None:
    """Delete the kind cluster and stop the project's Docker engine, leaving none of its chains or bridges."""
    from matchenv_devkit.cluster.dockerd import DockerEngine
    from matchenv_devkit.cluster.kind import KindCluster, KindError

    engine = DockerEngine(state_dir, progress=_echo_err)
    if engine.running():
        try:
            KindCluster(engine, state_dir, name=name, progress=_echo_err).delete()
        except KindError as exc:
            _echo_err(f"warning: {exc}")
    if not keep_engine:
        engine.stop()


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()

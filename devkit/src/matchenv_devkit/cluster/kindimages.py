"""kind's base and node images, built here from local parts (nothing can be pulled from a registry).

* the **base** (:meth:`KindImages.base`): Debian with systemd and the packages kind's own base image installs, kind's
  files (its entrypoint, containerd and kubelet units, read from kind's Go module at build time), and the real node's
  containerd, shim and runc, crictl, and Debian's CNI plugins;
* the **images a node preloads**: the control plane (kube-apiserver, -controller-manager, -scheduler; kube-proxy
  with Debian's iptables), etcd, CoreDNS and pause under the names kubeadm asks for, and rancher's local-path
  provisioner with its manifest, all from the project's builds;
* the **node** (:meth:`KindImages.node`): the base with kubeadm, kubelet and kubectl, ``/kind/version``, the default
  storage manifest and a bridge CNI configuration (kindnetd's source is not in kind's module: a cluster is created
  with ``disableDefaultCNI``), the preloaded images imported into its containerd, the way ``kind build node-image``
  makes it (``docker run``, ``ctr images import``, ``docker commit``).

The base and each image are buildah images exported to ``~/.cache/matchenv/images`` by content key, like the real
node's; the node image is committed by the project's Docker engine and saved there too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from matchenv_devkit.cluster.build import ensure_binaries, ensure_kind_binaries, ensure_node_binaries, module_dir
from matchenv_devkit.cluster.dockerd import DockerEngine
from matchenv_devkit.cluster.images import (
    DEBIAN_SUITE,
    POSTGRES_IMAGE,
    BuiltImage,
    ImageBuilder,
    ImageError,
    content_key,
    debian_mirror,
    empty_dirs,
    tree_inputs,
)
from matchenv_devkit.cluster.versions import (
    COREDNS_VERSION,
    ETCD_VERSION,
    KIND_VERSION,
    KUBERNETES_VERSION,
    LOCAL_PATH_PROVISIONER_VERSION,
)

# what kind's base image installs from apt (images/base/Dockerfile), less the network storage clients
KIND_BASE_PACKAGES = ("systemd", "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux", "mount",
                      "kmod", "libseccomp2", "pigz", "fuse-overlayfs", "bash", "ca-certificates", "curl", "jq",
                      "procps", "e2fsprogs")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap", "ptp")
HOST_CNI_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
REGISTRY = "registry.k8s.io"
ETCD_TAG = f"{ETCD_VERSION.removeprefix('v')}-0"
PAUSE_TAG = "3.10"  # the sandbox image kind's containerd configuration names
KIND_BASE_IMAGE = "localhost/matchenv/kind-base"
KIND_NODE_IMAGE = f"localhost/matchenv/kind-node:{KUBERNETES_VERSION}"
PROVISIONER_IMAGE = f"localhost/matchenv/local-path-provisioner:{LOCAL_PATH_PROVISIONER_VERSION}"
POD_SUBNET = "10.244.0.0/16"
NODE_POD_RANGE = "10.244.0.0/24"  # one node: its host-local range
STORAGE_PATH = "/var/local-path-provisioner"
RABBITMQ_PUBLIC = "docker.io/library/rabbitmq:4.0-management"
POSTGRES_PUBLIC = "docker.io/library/postgres:17"
# the dev kit's PostgreSQL image with the public image's uid (999) for its postgres user, which overlays/kind names
POSTGRES_STANDIN = f"""FROM {POSTGRES_IMAGE}
USER root
RUN groupmod --gid 999 postgres && usermod --uid 999 --gid 999 postgres \\
    && chown -R 999:999 /var/lib/postgresql /var/run/postgresql
USER 999:999
"""
RECIPE = Path(__file__).read_bytes()  # how the base and the node are made: an input of both


def cri_base_spec(spec: dict[str, object]) -> dict[str, object]:
    """kind's ``/etc/containerd/cri-base.json`` from ``ctr oci spec``: its product-files hook added, no rlimits."""
    result: dict[str, object] = json.loads(json.dumps(spec))
    hooks = result.setdefault("hooks", {})
    assert isinstance(hooks, dict)
    hooks.setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
    process = result.get("process")
    if isinstance(process, dict):
        process.pop("rlimits", None)
    return result


def cni_conflist() -> str:
    """The node's CNI network: a bridge with masquerade, one host-local range (kind's clusters here are one node)."""
    return json.dumps({
        "cniVersion": "1.0.0", "name": "kind",
        "plugins": [
            {"type": "bridge", "bridge": "kind0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": NODE_POD_RANGE}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2)


def storage_manifest(upstream: str, provisioner: str, helper: str) -> str:
    """rancher's ``deploy/local-path-storage.yaml`` as kind installs it: the images built here, its class named
    ``standard`` and the default, volumes under :data:`STORAGE_PATH`."""
    documents = [d for d in yaml.safe_load_all(upstream) if d]
    for doc in documents:
        kind = doc.get("kind")
        if kind == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = provisioner
                container["imagePullPolicy"] = "IfNotPresent"
        elif kind == "StorageClass":
            doc["metadata"]["name"] = "standard"
            doc["metadata"].setdefault("annotations", {})["storageclass.kubernetes.io/is-default-class"] = "true"
        elif kind == "ConfigMap":
            data = doc["data"]
            config = json.loads(data["config.json"])
            for path in config.get("nodePathMap", []):
                path["paths"] = [STORAGE_PATH]
            data["config.json"] = json.dumps(config, indent=2)
            pod = yaml.safe_load(data["helperPod.yaml"])
            for container in pod["spec"]["containers"]:
                container["image"] = helper
                container["imagePullPolicy"] = "IfNotPresent"
            data["helperPod.yaml"] = yaml.safe_dump(pod)
    return yaml.safe_dump_all(documents)


class KindImages(ImageBuilder):
    """Builds (or finds cached) kind's base image, the images a node preloads, the node image, and the project's
    images under the names ``overlays/kind`` uses; the real node's builder, with its cache and helpers."""

    def __init__(self) -> None:
        super().__init__()
        self.kind = ensure_kind_binaries()
        self.control_plane = ensure_binaries()
        ensure_node_binaries(self.binaries)

    # -- the base ----------------------------------------------------------------------------------------------
    def base(self) -> BuiltImage:
        files = module_dir("sigs.k8s.io/kind", KIND_VERSION, self.progress) / "images" / "base" / "files"
        binaries = [self.binaries.path(n) for n in ("containerd", "ctr", "containerd-shim-runc-v2", "runc")]
        inputs = [RECIPE, DEBIAN_SUITE, *KIND_BASE_PACKAGES, debian_mirror(), *tree_inputs(files, ["."]),
                  *(b.read_bytes() for b in binaries), self.kind.path("crictl").read_bytes(),
                  *(p.read_bytes() for p in self._cni_plugins())]
        name = f"{KIND_BASE_IMAGE}:{content_key(inputs)}"

        def build(workdir: Path) -> None:
            tree = workdir / "rootfs"
            self.progress(f"debootstrap {DEBIAN_SUITE} with systemd for kind's base image ...")
            self._run(["debootstrap", "--variant=minbase", f"--include={','.join(KIND_BASE_PACKAGES)}",
                       DEBIAN_SUITE, str(tree), debian_mirror()], "debootstrap (kind base)", timeout=1800)
            self._fill_base(tree, files)
            self._from_scratch(name, lambda c: self._copy_tree(c, tree), [
                "--env", "container=docker",
                "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--stop-signal", "SIGRTMIN+3", "--entrypoint", '["/usr/local/bin/entrypoint", "/sbin/init"]',
                "--cmd", ""])

        return self._cached("kind-base", name, inputs, build)

    def _cni_plugins(self) -> list[Path]:
        missing = [p for p in CNI_PLUGINS if not (HOST_CNI_DIR / p).exists()]
        if missing:
            raise ImageError(f"CNI plugins missing from {HOST_CNI_DIR}: {', '.join(missing)} "
                             "(make system-deps installs containernetworking-plugins)")
        return [HOST_CNI_DIR / p for p in CNI_PLUGINS]

    def _fill_base(self, tree: Path, files: Path) -> None:
        """What kind's base Dockerfile does after installing packages, on the debootstrap tree."""
        empty_dirs(tree, ("var/cache/apt", "var/lib/apt/lists", "var/log", "usr/share/doc", "usr/share/man"))
        for source in sorted(files.rglob("*")):
            if source.is_dir():
                continue
            dest = tree / source.relative_to(files)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            executable = "bin" in source.relative_to(files).parts
            dest.chmod(0o755 if executable else 0o644)
        for directory in ("kind", "kind/bin"):
            (tree / directory).chmod(0o755)
        # this machine forbids lowering oom_score_adj (no CAP_SYS_RESOURCE): runc init fails with "Permission
        # denied" unless containerd keeps a container's score at or above its own (what kind does when rootless)
        config = tree / "etc/containerd/config.toml"
        config.write_text(config.read_text().replace("restrict_oom_score_adj = false", "restrict_oom_score_adj = true"))
        for pattern in ("lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service",
                        "lib/systemd/system/multi-user.target.wants/*", "etc/systemd/system/*.wants/*",
                        "lib/systemd/system/local-fs.target.wants/*", "lib/systemd/system/sockets.target.wants/*udev*",
                        "lib/systemd/system/sockets.target.wants/*initctl*", "lib/systemd/system/basic.target.wants/*"):
            for path in tree.glob(pattern):
                path.unlink()
        with (tree / "etc/systemd/journald.conf").open("a") as conf:
            conf.write("ReadKMsg=no\n")
        init = tree / "sbin/init"
        if not init.exists() and not init.is_symlink():
            init.symlink_to("/usr/lib/systemd/systemd")
        for name in ("containerd", "ctr", "containerd-shim-runc-v2"):
            _install(self.binaries.path(name), tree / "usr/local/bin" / name)
        _install(self.binaries.path("runc"), tree / "usr/local/sbin/runc")
        _install(self.kind.path("crictl"), tree / "usr/local/bin/crictl")
        for plugin in self._cni_plugins():
            _install(plugin, tree / "opt/cni/bin" / plugin.name)
        spec = json.loads(self._run([str(self.binaries.path("ctr")), "oci", "spec"], "ctr oci spec"))
        (tree / "etc/containerd/cri-base.json").write_text(json.dumps(cri_base_spec(spec), indent=2))
        self._run(["chroot", str(tree), "systemctl", "enable", "kubelet.service", "containerd.service",
                   "undo-mount-hacks.service"], "systemctl enable (kind base)")
        self._run(["chroot", str(tree), "systemctl", "mask", "systemd-binfmt.service"], "systemctl mask")
        (tree / "etc/kubernetes/manifests").mkdir(parents=True, exist_ok=True)

    def _copy_tree(self, container: str, tree: Path) -> None:
        mount = self._buildah("mount", container, label="buildah mount").strip()
        self._run(["cp", "-a", f"{tree}/.", mount], "copy the root filesystem")
        self._buildah("umount", container, label="buildah umount")

    # -- the images a node preloads ----------------------------------------------------------------------------
    def preloaded(self) -> list[BuiltImage]:
        images = [self._binary_image(n, f"{REGISTRY}/{n}:{KUBERNETES_VERSION}", self.control_plane.path(n))
                  for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
        images.append(self._binary_image("etcd", f"{REGISTRY}/etcd:{ETCD_TAG}", self.control_plane.path("etcd")))
        # kube-proxy on the Debian base with the tools it runs (iptables, conntrack), where kubeadm's DaemonSet runs it
        images.append(self._binary_image("kube-proxy", f"{REGISTRY}/kube-proxy:{KUBERNETES_VERSION}",
                                         self.binaries.path("kube-proxy"),
                                         base_packages=("iptables", "conntrack", "ipset", "kmod")))
        images.append(self._retagged(self.coredns(), f"{REGISTRY}/coredns/coredns:{COREDNS_VERSION}"))
        images.append(self._retagged(self.pause(), f"{REGISTRY}/pause:{PAUSE_TAG}"))
        images.append(self._binary_image("local-path-provisioner", PROVISIONER_IMAGE,
                                         self.kind.path("local-path-provisioner"), base_packages=()))
        return images

    def helper_image(self) -> str:
        """The local-path provisioner's helper pod image (it needs a shell, mkdir and rm): the Debian base."""
        return self.base_name

    def _binary_image(self, label: str, name: str, binary: Path,
                      base_packages: tuple[str, ...] | None = None) -> BuiltImage:
        """One static binary in ``/usr/local/bin`` (on ``PATH``, as the control-plane images have it): from scratch,
        or (``base_packages`` not None) on the Debian base with those packages."""
        def build(workdir: Path) -> None:
            if base_packages is None:
                self._scratch_image(name, {binary: f"/usr/local/bin/{binary.name}"}, [
                    "--env", "PATH=/usr/local/bin:/usr/bin:/bin", "--entrypoint", f'["/usr/local/bin/{binary.name}"]'])
                return
            shutil.copy2(binary, workdir / binary.name)
            install = (f"RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                       f"--no-install-recommends {' '.join(base_packages)} && rm -rf /var/lib/apt/lists/*\n"
                       if base_packages else "")
            (workdir / "Dockerfile").write_text(f"ARG BASE_IMAGE\nFROM $BASE_IMAGE\n{install}"
                                                f"COPY {binary.name} /usr/local/bin/{binary.name}\n"
                                                f'ENTRYPOINT ["/usr/local/bin/{binary.name}"]\n')
            self._bud(workdir, name)

        on_base = [] if base_packages is None else [self.base_name, *base_packages]
        inputs: list[bytes | str] = [name, binary.read_bytes(), *on_base]
        return self._cached(label, name, inputs, build)

    def _retagged(self, image: BuiltImage, name: str) -> BuiltImage:
        """``image`` under another name (a docker-archive carries one)."""
        def build(_workdir: Path) -> None:
            self._buildah("pull", f"docker-archive:{image.archive}", label=f"buildah pull {image.name}")
            self._buildah("tag", image.name, name, label="buildah tag")

        label = name.rsplit("/", 1)[-1].split(":")[0] + "-kind"
        return self._cached(label, name, [name, image.archive.name], build)

    # -- the project's images, named as overlays/kind names them --------------------------------------------------
    def for_overlay(self) -> list[BuiltImage]:
        """The project's image, and the local stand-ins for the public images ``overlays/kind`` names: RabbitMQ as
        built (uid 999, like the public one), PostgreSQL with its user at the public image's uid."""
        postgres = self.service("postgres", POSTGRES_IMAGE)

        def build_postgres(workdir: Path) -> None:
            (workdir / "Dockerfile").write_text(POSTGRES_STANDIN)
            self._buildah("pull", f"docker-archive:{postgres.archive}", label=f"buildah pull {postgres.name}")
            self._bud(workdir, POSTGRES_PUBLIC)

        standin = self._cached("postgres-public", POSTGRES_PUBLIC, [POSTGRES_STANDIN, postgres.archive.name],
                               build_postgres)
        return [self.project(), self._retagged(self.rabbitmq(), RABBITMQ_PUBLIC), standin]

    # -- the node ----------------------------------------------------------------------------------------------
    def node(self, engine: DockerEngine) -> str:
        """The node image in ``engine`` (built, or loaded from its cached archive); returns its name."""
        base = self.base()
        preloaded = self.preloaded()
        helper = self.helper_image()
        provisioner = module_dir("github.com/rancher/local-path-provisioner", LOCAL_PATH_PROVISIONER_VERSION,
                                 self.progress)
        storage = storage_manifest((provisioner / "deploy" / "local-path-storage.yaml").read_text(),
                                   PROVISIONER_IMAGE, helper)
        binaries = [self.kind.path("kubeadm"), self.binaries.path("kubelet"), self.control_plane.path("kubectl")]
        helper_archive = self._helper_archive()
        inputs: list[bytes | str] = [RECIPE, base.archive.name, *(i.archive.name for i in preloaded),
                                     helper_archive.name, storage,
                                     cni_conflist(), *(b.read_bytes() for b in binaries)]
        archive = self.cache / f"kind-node-{content_key(inputs)}.tar"
        if archive.exists():
            if not engine.docker_ok("image", "inspect", KIND_NODE_IMAGE):
                engine.docker("load", "--input", str(archive), timeout=900)
            return KIND_NODE_IMAGE
        started = time.monotonic()
        self.progress(f"building kind's node image {KIND_NODE_IMAGE} ...")
        engine.docker("load", "--input", str(base.archive), timeout=900)
        container = engine.docker("run", "-d", "--entrypoint=sleep", "--security-opt", "seccomp=unconfined",
                                  base.name, "infinity").strip()
        try:
            for binary in binaries:
                engine.docker("cp", str(binary), f"{container}:/usr/bin/{binary.name}")
            with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
                for path, text in {"/kind/version": KUBERNETES_VERSION,
                                   "/kind/manifests/default-storage.yaml": storage,
                                   "/etc/cni/net.d/10-kind.conflist": cni_conflist()}.items():
                    local = Path(tmp) / Path(path).name
                    local.write_text(text)
                    engine.docker("exec", container, "mkdir", "-p", str(Path(path).parent))
                    engine.docker("cp", str(local), f"{container}:{path}")
            engine.docker("exec", container, "bash", "-c", "nohup containerd > /dev/null 2>&1 &")
            engine.docker("exec", container, "bash", "-c",
                          "for i in $(seq 50); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null "
                          "2>&1 && exit 0; sleep 0.2; done; exit 1")
            for image in [*preloaded, BuiltImage(helper, helper_archive)]:
                engine.docker("exec", "-i", container, "ctr", "--namespace=k8s.io", "images", "import",
                              "--label=io.cri-containerd.pinned=pinned", "--all-platforms", "--no-unpack",
                              "--digests", "-", stdin=image.archive.read_bytes(), timeout=900)
            engine.docker("exec", container, "pkill", "containerd")
            engine.docker("commit", "--change", 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]',
                          container, KIND_NODE_IMAGE)
        finally:
            engine.docker_ok("rm", "-f", "-v", container)
        partial = archive.with_suffix(".partial")
        engine.docker("save", "--output", str(partial), KIND_NODE_IMAGE, timeout=900)
        for stale in self.cache.glob("kind-node-*.tar"):
            stale.unlink()
        partial.rename(archive)
        self.progress(f"kind's node image built in {time.monotonic() - started:.0f}s "
                              f"({archive.stat().st_size / 1e6:.0f} MB)")
        return KIND_NODE_IMAGE

    def _helper_archive(self) -> Path:
        """The Debian base as a docker-archive, for the provisioner's helper pods."""
        name = self.helper_image()

        def build(_workdir: Path) -> None:
            self.ensure_base()

        return self._cached("local-path-helper", name, [name], build).archive


def _install(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    dest.chmod(0o755)


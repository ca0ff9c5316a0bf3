#!/usr/bin/env bash
# Install what the tests and the demo need from Debian's packages, and check the Go toolchain.
# Idempotent: packages already present are not touched. Uses sudo when not root.
set -euo pipefail

need=()
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# the real node: runc is built with cgo against libseccomp
[ -f /usr/include/seccomp.h ] || need+=(libseccomp-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# the real node's network (CNI bridge, host-local, loopback), Services (kube-proxy: iptables, conntrack), and the
# daemonless image builds (debootstrap for the base image, buildah for the Dockerfile); gcc -static needs libc.a
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || ls /usr/lib/*/libc.a >/dev/null 2>&1 || need+=(libc6-dev)
# make e2e-kind (part of make test): a Docker engine the project starts for kind's nodes (Debian's docker.io, which
# brings Debian's containerd and runc: the real node never uses them, and runs beside them in the tests)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
# the monitoring tests: promtool checks the alert rules, a real Prometheus scrapes a running stack
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# the Flower test opens Flower's pages in a headless browser
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-liberation)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install: ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "installing ${need[*]} (apt-get)" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The packages' own services are not used: tests and the demo start private nodes on loopback.
  $sudo service rabbitmq-server stop >/dev/null 2>&1 || true
  $sudo service prometheus stop >/dev/null 2>&1 || true
  $sudo service docker stop >/dev/null 2>&1 || true
  $sudo service containerd stop >/dev/null 2>&1 || true
fi

go_bin=$(command -v go || echo /usr/local/go/bin/go)
if [ ! -x "$go_bin" ]; then
  echo "error: the Go toolchain (>= 1.26) is needed to build the local Kubernetes control plane; none was found" >&2
  exit 1
fi
go_version=$("$go_bin" env GOVERSION | sed 's/^go//')
major=${go_version%%.*}; rest=${go_version#*.}; minor=${rest%%.*}
if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 26 ]; }; then
  echo "error: Go $go_version found; Kubernetes v1.36 needs Go >= 1.26" >&2
  exit 1
fi

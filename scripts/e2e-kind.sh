#!/usr/bin/env bash
# make e2e-kind: the install tests (tests/e2e/test_install.py) on a kind cluster instead of the real node.
#
# Here (no KIND_NODE_IMAGE): everything is built on this machine and nothing is pulled. `matchenv-dev kind up` starts
# the project's own Docker engine (Debian's docker.io, its data under $MATCHENV_KIND_DIR), builds or reuses kind's
# base and node images (~/.cache/matchenv), creates the cluster, and loads the project's image with local stand-ins
# for the public RabbitMQ and PostgreSQL images manifests/overlays/kind names; `matchenv-dev kind down` deletes the
# cluster and stops the engine, leaving none of its containers, chains or bridges.
#
# With KIND_NODE_IMAGE (a public kindest/node image, as in .github/workflows/e2e-kind.yml): the Docker engine that
# answers (DOCKER_HOST or the default), the project's image built with `docker build`, the public images pulled.
#
# MATCHENV_KIND_KEEP=1 leaves the cluster (and the engine) running after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${MATCHENV_KIND_CLUSTER:-matchenv-e2e}
CACHE=${MATCHENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/matchenv}
export MATCHENV_KIND_DIR=${MATCHENV_KIND_DIR:-/tmp/matchenv-kind}
dev=.venv/bin/matchenv-dev

run_tests() {
  MATCHENV_E2E_KUBECONFIG="$1" MATCHENV_E2E_OVERLAY=overlays/kind .venv/bin/pytest tests/e2e/test_install.py -v \
    -p no:cacheprovider "${@:2}"
}

if [ -z "${KIND_NODE_IMAGE:-}" ]; then
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "e2e-kind: FAILED: dockerd is not installed (make system-deps installs Debian's docker.io); or set" \
         "KIND_NODE_IMAGE to a public kind node image to use a Docker engine of your own" >&2
    exit 1
  fi
  if [ -z "${MATCHENV_KIND_KEEP:-}" ]; then
    trap '"$dev" kind down --name "$CLUSTER" >&2' EXIT
  fi
  exports=$("$dev" kind up --name "$CLUSTER")
  eval "$exports"  # DOCKER_HOST (the tests kill a container with docker exec) and KUBECONFIG
  run_tests "$KUBECONFIG" "$@"
  exit
fi

if ! why=$(docker info 2>&1 >/dev/null); then
  echo "e2e-kind: FAILED: KIND_NODE_IMAGE is set but no Docker engine answers: ${why##*$'\n'}" >&2
  exit 1
fi
kind=${KIND:-$(command -v kind || true)}
if [ -z "$kind" ]; then
  kind="$("$dev" kind build)/kind"
fi
kubeconfig="$CACHE/kind-$CLUSTER.kubeconfig"
if ! "$kind" get clusters | grep -qx "$CLUSTER"; then
  "$kind" create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 180s --kubeconfig "$kubeconfig"
fi
if [ -z "${MATCHENV_KIND_KEEP:-}" ]; then
  trap '"$kind" delete cluster --name "$CLUSTER"' EXIT
fi
"$kind" get kubeconfig --name "$CLUSTER" > "$kubeconfig"
docker build -t matchenv:0.1.0 .
"$kind" load docker-image matchenv:0.1.0 --name "$CLUSTER"
run_tests "$kubeconfig" "$@"

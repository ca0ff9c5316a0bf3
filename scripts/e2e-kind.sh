#!/usr/bin/env bash
# make e2e-kind: the install tests (tests/e2e/test_install.py) on a kind cluster instead of the real node.
# A kind cluster (kind from $KIND, PATH, or built from sigs.k8s.io/kind into ~/.cache/matchenv), the project's image
# built with Docker and loaded into it, manifests/overlays/kind applied by the tests with that KUBECONFIG.
# Without a Docker engine that answers, it says so and skips (exit 0): nothing is passed silently.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND_VERSION=v0.33.0
CLUSTER=${MATCHENV_KIND_CLUSTER:-matchenv-e2e}
CACHE=${MATCHENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/matchenv}

if ! command -v docker >/dev/null 2>&1; then
  echo "e2e-kind: SKIPPED: no docker command on PATH (kind runs its nodes as Docker containers)"
  exit 0
fi
if ! why=$(docker info 2>&1 >/dev/null); then
  echo "e2e-kind: SKIPPED: no Docker engine answers: ${why##*$'\n'}"
  exit 0
fi

kind=${KIND:-$(command -v kind || true)}
if [ -z "$kind" ]; then
  kind="$CACHE/kind-$KIND_VERSION/kind"
  if [ ! -x "$kind" ]; then
    echo "e2e-kind: building kind $KIND_VERSION from sigs.k8s.io/kind"
    GOBIN="$(dirname "$kind")" GOTOOLCHAIN=local go install "sigs.k8s.io/kind@$KIND_VERSION"
  fi
fi

kubeconfig="$CACHE/kind-$CLUSTER.kubeconfig"
if ! "$kind" get clusters | grep -qx "$CLUSTER"; then
  "$kind" create cluster --name "$CLUSTER" --wait 180s --kubeconfig "$kubeconfig"
fi
"$kind" get kubeconfig --name "$CLUSTER" > "$kubeconfig"
docker build -t matchenv:0.1.0 .
"$kind" load docker-image matchenv:0.1.0 --name "$CLUSTER"
MATCHENV_E2E_KUBECONFIG="$kubeconfig" MATCHENV_E2E_OVERLAY=overlays/kind \
  .venv/bin/pytest tests/e2e/test_install.py -v "$@"
if [ -z "${MATCHENV_KIND_KEEP:-}" ]; then
  "$kind" delete cluster --name "$CLUSTER"
fi

#!/usr/bin/env bash
# The local demo: a real control plane, the MatchEnvironment CRD, and the prod/dev/staging environments.
# Leaves the control plane running; `make cluster-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/matchenv-cluster}

"$BIN/matchenv" cluster down --state-dir "$CLUSTER_DIR" >/dev/null 2>&1 || true
eval "$("$BIN/matchenv" cluster up --state-dir "$CLUSTER_DIR")"

echo "== installing the CRD and its queue-name defaulting policy"
kubectl apply -f crds/
kubectl wait --for=condition=Established crd/matchenvironments.matchenv.io --timeout=60s
"$BIN/matchenv" crd-ready --timeout 30

echo "== applying prod, dev and staging"
kubectl apply -f examples/prod.yaml -f examples/dev.yaml -f examples/staging.yaml
kubectl get matchenvironments
echo
echo "== staging as the API server stored it (defaults filled in)"
kubectl get menv staging -o yaml | sed -n '/^spec:/,/^status:/p'

cat <<MSG

The control plane is still running. To use it:
  export KUBECONFIG=$KUBECONFIG
  export PATH=$(dirname "$(command -v kubectl)"):\$PATH
  kubectl get menv
Stop it with: make cluster-down
MSG

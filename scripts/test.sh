#!/usr/bin/env bash
# make test: the whole suite, in the order that hides the cached builds behind the tests that need none of them.
#
# 1. In the background, at the lowest CPU priority: the control plane, the node, its images and kind's binaries
#    (`make cluster-build node-build images`, `matchenv-dev kind build`; each reused when cached, so this is only
#    long on a cold cache).
# 2. Meanwhile the tests that need no cluster: the unit tests and the integration tier on RabbitMQ 4, then the
#    integration tier again on RabbitMQ 3.10, the oldest supported (MATCHENV_RABBITMQ=3).
# 3. Once the builds are done (their log is printed then): the e2e tier on the real control plane and node, then the
#    install tests on a kind cluster built here (scripts/e2e-kind.sh).
#
# With PYTEST_ARGS: everything is built first, then only `pytest $PYTEST_ARGS` runs. A pytest session that collects
# no test fails the suite. Every part runs even when an earlier one failed (but not the tiers a failed build needs).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

builds() {
  make --no-print-directory cluster-build node-build images || return
  if [ -z "${KIND_NODE_IMAGE:-}" ] && command -v dockerd >/dev/null 2>&1; then
    "$bin/matchenv-dev" kind build >/dev/null
  fi
}

session() {  # one pytest session; "no tests collected" (5) is a failure
  "$bin/pytest" "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing the suite" >&2; return 1; fi
  return $rc
}

if [ -n "${PYTEST_ARGS:-}" ]; then
  builds || exit
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
  session $PYTEST_ARGS
  exit
fi

rc=0
note() { [ "$1" -ne 0 ] && [ $rc -eq 0 ] && rc=$1; return 0; }

build_log=$(mktemp -t matchenv-build.XXXXXX)
setsid nice -n 19 bash -c "$(declare -f builds); bin=$bin; builds" >"$build_log" 2>&1 &
build_pid=$!
trap 'kill -- -$build_pid 2>/dev/null; rm -f "$build_log"' EXIT
echo "== building the control plane, the node, its images and kind's binaries in the background (pid $build_pid)"

echo "== the unit tests and the integration tier on RabbitMQ 4 (no cluster needed)"
session tests/unit devkit/tests/unit tests/integration; note $?
echo "== the integration tier again on RabbitMQ 3.10, the oldest supported (MATCHENV_RABBITMQ=3)"
MATCHENV_RABBITMQ=3 session tests/integration -m 'not cluster'; note $?

echo "== waiting for the background builds"
wait "$build_pid"; built=$?
cat "$build_log"
if [ $built -ne 0 ]; then
  echo "the builds failed (exit $built, their log above): the e2e tier and the kind tests did not run" >&2
  note $built
  exit $rc
fi

echo "== the e2e tier on the real control plane and node"
session tests/e2e devkit/tests/e2e; note $?
echo "== the install tests on a kind cluster built here (make e2e-kind)"
scripts/e2e-kind.sh; note $?
exit $rc

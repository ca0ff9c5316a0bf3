#!/usr/bin/env bash
# make test: the whole suite, in the order that hides the cached builds behind the tests that need none of them.
#
# In the background, at the lowest CPU priority, one after another (each reused when cached, so this is only long on
# a cold cache): the control plane (`make cluster-build`), then the node, its images and kind's binaries
# (`make node-build images`, `matchenv-dev kind build`). Meanwhile:
# 1. the tests that need no cluster: the unit tests and the integration tier on RabbitMQ 4;
# 2. once the control plane is built: the e2e tests that need no real node (pods as processes);
# 3. once the node and its images are built: the e2e tests on the real node (marked `node`), and beside them (they
#    leave much of the CPU idle, waiting on pods) the integration tier again on RabbitMQ 3.10, the oldest supported
#    (MATCHENV_RABBITMQ=3; its output is printed after them), and the rest of the builds (kind's binaries);
# 4. once everything is built (the builds' log is printed then): the install tests on a kind cluster built here
#    (scripts/e2e-kind.sh).
#
# With PYTEST_ARGS: everything is built first, then only `pytest $PYTEST_ARGS` runs. A pytest session that collects
# no test fails the suite. Every part runs even when an earlier one failed (but not the tiers a failed build needs).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

builds() {  # $1: a file made once the control plane is built, $2: once the node and its images are
  make --no-print-directory cluster-build || return
  : >"${1:-/dev/null}"
  make --no-print-directory node-build images || return
  : >"${2:-/dev/null}"
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

work=$(mktemp -d -t matchenv-test.XXXXXX)
setsid nice -n 19 bash -c "$(declare -f builds); bin=$bin; builds $work/control-plane $work/node" \
  >"$work/build.log" 2>&1 &
build_pid=$!
oldest_pid=
trap 'kill -- -$build_pid ${oldest_pid:+-$oldest_pid} 2>/dev/null; rm -rf "$work"' EXIT
echo "== building the control plane, then the node, its images and kind's binaries, in the background (pid $build_pid)"

oldest_rabbitmq() {  # the integration tier again, on the oldest RabbitMQ matchenv supports
  MATCHENV_RABBITMQ=3 session tests/integration -m 'not cluster' -p no:cacheprovider
}

failed_build() {
  cat "$work/build.log"
  echo "the builds failed (exit $1, their log above): $2 did not run" >&2
  note "$1"
  echo "== the integration tier again on RabbitMQ 3.10, the oldest supported (MATCHENV_RABBITMQ=3)"
  oldest_rabbitmq; note $?
  exit $rc
}

echo "== the unit tests and the integration tier on RabbitMQ 4 (no cluster needed)"
session tests/unit devkit/tests/unit tests/integration; note $?

built_up_to() {  # $1: the marker; returns once it is made, or once the builds ended without it (then non-zero)
  while [ ! -e "$work/$1" ] && kill -0 "$build_pid" 2>/dev/null; do sleep 2; done
  [ -e "$work/$1" ]
}

echo "== waiting for the control plane's build"
if ! built_up_to control-plane; then
  wait "$build_pid"; failed_build $? "the e2e tier and the kind tests"
fi
echo "== the e2e tests that need no real node (pods as local processes)"
session tests/e2e devkit/tests/e2e -m 'not node'; note $?

echo "== waiting for the node's build"
if ! built_up_to node; then
  wait "$build_pid"; failed_build $? "the e2e tests on the real node and the kind tests"
fi
echo "== the integration tier again on RabbitMQ 3.10, the oldest supported (MATCHENV_RABBITMQ=3), beside the next" \
     "(its output follows that)"
setsid bash -c "$(declare -f session oldest_rabbitmq); bin=$bin; oldest_rabbitmq" >"$work/oldest.log" 2>&1 &
oldest_pid=$!
echo "== the e2e tests on the real node"
session tests/e2e devkit/tests/e2e -m node; note $?
wait "$oldest_pid"; oldest=$?
echo "== the integration tier on RabbitMQ 3.10 (run beside the real node's tests)"
cat "$work/oldest.log"; note $oldest
echo "== waiting for kind's build"
wait "$build_pid"; built=$?
cat "$work/build.log"
if [ $built -ne 0 ]; then
  echo "the builds failed (exit $built, their log above): the kind tests did not run" >&2
  note $built
  exit $rc
fi
echo "== the install tests on a kind cluster built here (make e2e-kind)"
scripts/e2e-kind.sh; note $?
exit $rc

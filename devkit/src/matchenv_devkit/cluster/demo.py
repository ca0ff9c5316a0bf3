"""``matchenv-dev demo``: the whole pipeline on this machine, from nothing to matches in three databases.

On the real node (the default) it is what users deploy: ``kubectl apply -k manifests/overlays/local`` (the operator
with its standby, RabbitMQ and a PostgreSQL per environment, all pods), scrape Jobs from the CronJob, staging added
by one YAML file. ``--node process`` is the quicker variant: the operator, broker and databases are host processes
and the worker pods local processes (no root needed).
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from matchenv_devkit.cluster.cluster import LocalCluster
from matchenv_devkit.cluster.install import SYSTEM, Installation
from matchenv_devkit.cluster.kubectl import Kubectl
from matchenv_devkit.cluster.nodeconfig import NODE_IP
from matchenv_devkit.cluster.realnode import RealNode
from matchenv_devkit.cluster.stack import LocalStack

Say = Callable[[str], None]


def run_demo(state_dir: Path, keep: bool, say: Say, node: str = "real") -> int:
    """``node``: ``real`` (everything as pods, installed from the manifests) or ``process`` (the quick variant)."""
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    stoppers: list[Callable[[], None]] = []
    try:
        if node == "real":
            _installed_demo(state_dir, keep, say, stoppers)
        else:
            _process_demo(state_dir, keep, say, stoppers)
        return 0
    except Exception as exc:
        say(f"demo failed: {exc}")
        return 1
    finally:
        say("== stopping everything")
        for stop in reversed(stoppers):
            stop()


def _installed_demo(state_dir: Path, keep: bool, say: Say, stoppers: list[Callable[[], None]]) -> None:
    say("== starting the Kubernetes control plane and a real node (a first run builds the binaries and images)")
    cluster = LocalCluster(state_dir / "cluster", node_ip=NODE_IP, log=lambda m: say(f"   {m}"))
    stoppers.append(cluster.stop)
    cluster.start()
    stoppers.append(RealNode(cluster, log=lambda m: say(f"   {m}")).start().stop)
    kubectl = Kubectl(cluster)
    install = Installation(kubectl, state_dir, log=lambda m: say(f"   {m}")).prepare()
    stoppers.append(install.close)
    say(f"== kubectl apply -k manifests/overlays/local   (passwords generated into {install.manifests}/**/*.env;"
        " staging held back to be added later)")
    docs = [d for d in yaml.safe_load_all(install.build()) if d]
    install.apply(yaml.safe_dump_all([d for d in docs if (d["kind"], d["metadata"]["name"])
                                      != ("MatchEnvironment", "staging")]))
    install.wait_installed()
    install.wait_ready("prod", "dev")
    say(kubectl.run("get", "pods", "-A", "-o", "wide").stdout.rstrip())
    say(kubectl.run("get", "matchenvironments").stdout.rstrip())
    say("== kubectl create job -n matchenv-system --from=cronjob/matchenv-scrape scrape-1   (1,000 matches)")
    install.scrape_job("scrape-1")
    say("   " + install.job_log("scrape-1").strip().splitlines()[-1])
    install.wait_rows({"prod": 1000, "dev": 1000})
    say("== kubectl apply -f manifests/environments/staging/matchenvironment.yaml   (one YAML adds an environment;"
        " backfill.since: 168h replays the feed's archive into it)")
    kubectl.run("apply", "-f", str(install.manifests / "environments/staging/matchenvironment.yaml"))
    install.wait_ready("staging")
    say("== the next scrape (200 new matches): kubectl create job --from=cronjob/matchenv-scrape scrape-2")
    kubectl.run("patch", "configmap", "-n", SYSTEM, "matchenv-scrape", "--type=merge", "-p",
                '{"data": {"MATCHENV_SCRAPE_SYNTHETIC": "200", "MATCHENV_SCRAPE_START": "1000"}}')
    install.scrape_job("scrape-2")
    say("   " + install.job_log("scrape-2").strip().splitlines()[-1])
    install.wait_rows({"prod": 1200, "dev": 1200, "staging": 1200})
    kubectl.run("wait", "--for=condition=BackfillComplete", "menv/staging", "--timeout=180s", timeout=200)
    say("   staging: " + _backfill_message(kubectl))
    _report(say, kubectl, install.rows, install.duplicates)
    if keep:
        say("\nEverything is still running. In another shell:")
        say(f"   export KUBECONFIG={cluster.kubeconfig} PATH={cluster.binaries.bin_dir}:$PATH")
        say("   kubectl get menv; kubectl create job -n matchenv-system --from=cronjob/matchenv-scrape scrape-3")
        _wait_for_ctrl_c(say)


def _process_demo(state_dir: Path, keep: bool, say: Say, stoppers: list[Callable[[], None]]) -> None:
    say("== starting the Kubernetes control plane, the process node, RabbitMQ and PostgreSQL")
    stack, shutdown = LocalStack.create(state_dir, log=lambda m: say(f"   {m}"), node="process")
    stoppers.append(shutdown)
    say("== installing the CRD, RBAC and the broker Secret; the operator")
    stack.start()
    say("== kubectl apply -f manifests/environments/{prod,dev}/matchenvironment.yaml")
    stack.apply("prod")
    stack.apply("dev")
    stack.wait_ready("prod", "dev")
    say(stack.kubectl.run("get", "matchenvironments").stdout.rstrip())
    say("== matchenv scrape --synthetic 500")
    say("   " + stack.scrape("--synthetic", "500").stdout.strip())
    stack.wait_rows({"prod": 500, "dev": 500})
    say("== kubectl apply -f manifests/environments/staging/matchenvironment.yaml   (one YAML adds an environment;"
        " backfill.since: 168h replays the feed's archive into it)")
    stack.apply("staging")
    stack.wait_ready("staging")
    say("== matchenv scrape --synthetic 200 --start 500")
    say("   " + stack.scrape("--synthetic", "200", "--start", "500").stdout.strip())
    stack.wait_rows({"prod": 700, "dev": 700, "staging": 700})
    stack.kubectl.run("wait", "--for=condition=BackfillComplete", "menv/staging", "--timeout=180s", timeout=200)
    say("   staging: " + _backfill_message(stack.kubectl))
    _report(say, stack.kubectl, stack.rows, stack.duplicates)
    if keep:
        say("\nEverything is still running. In another shell:")
        say(f"   export KUBECONFIG={stack.kubectl.cluster.kubeconfig}")
        say(f"   export RABBITMQ_URL='{stack.rabbitmq.endpoints.amqp_url}'")
        say("   kubectl get menv; matchenv scrape --synthetic 100")
        _wait_for_ctrl_c(say)


def _backfill_message(kubectl: Kubectl) -> str:
    status = kubectl.get_json("menv", "staging").get("status") or {}
    return str((status.get("backfill") or {}).get("message") or "")


def _report(say: Say, kubectl: Kubectl, rows: Callable[[str], int], duplicates: Callable[[str], int]) -> None:
    say("== kubectl get matchenvironments")
    say(kubectl.run("get", "matchenvironments").stdout.rstrip())
    say("== rows per environment database (and each worker Deployment's revision: 1 unless its spec changed)")
    for env in ("prod", "dev", "staging"):
        deployment = kubectl.get_json("deployment", f"{env}-workers")
        revision = (deployment["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", "?")
        say(f"   {env:8} {rows(env):5} rows, {duplicates(env)} duplicates, workers at revision {revision}")


def _wait_for_ctrl_c(say: Say) -> None:
    say("Press Ctrl-C to stop it all.")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()

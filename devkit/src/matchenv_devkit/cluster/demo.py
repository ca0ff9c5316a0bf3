"""``matchenv-dev demo``: the whole pipeline on this machine, from nothing to matches in three databases."""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from matchenv_devkit.cluster.stack import LocalStack


def run_demo(state_dir: Path, keep: bool, say: Callable[[str], None], node: str = "real") -> int:
    """``node``: ``real`` (worker pods are containers of the project's image) or ``process`` (worker pods are local
    processes; no root needed)."""
    shutil.rmtree(state_dir, ignore_errors=True)
    say(f"== starting the Kubernetes control plane, a {node} node, RabbitMQ and PostgreSQL "
        "(a first run builds the binaries and images: ~15 min)")
    try:
        stack, shutdown = LocalStack.create(state_dir, log=lambda m: say(f"   {m}"), node=node)
    except Exception as exc:
        say(f"demo failed: {exc}")
        return 1
    try:
        say("== installing the CRD, RBAC and the broker Secret; the operator")
        stack.start()
        say("== kubectl apply -f examples/prod.yaml -f examples/dev.yaml")
        stack.apply("prod")
        stack.apply("dev")
        stack.wait_ready("prod", "dev")
        say(stack.kubectl.run("get", "matchenvironments").stdout.rstrip())
        say("== matchenv scrape --synthetic 500")
        say("   " + stack.scrape("--synthetic", "500").stdout.strip())
        stack.wait_rows({"prod": 500, "dev": 500})
        say("== kubectl apply -f examples/staging.yaml   (one YAML adds an environment)")
        stack.apply("staging")
        stack.wait_ready("staging")
        say("== matchenv scrape --synthetic 200 --start 500")
        say("   " + stack.scrape("--synthetic", "200", "--start", "500").stdout.strip())
        stack.wait_rows({"prod": 700, "dev": 700, "staging": 200})
        say("== kubectl get matchenvironments")
        say(stack.kubectl.run("get", "matchenvironments").stdout.rstrip())
        say("== rows per environment database")
        for env in ("prod", "dev", "staging"):
            say(f"   {env:8} {stack.rows(env):5} rows, {stack.duplicates(env)} duplicates  ({stack.databases[env]})")
        if node == "real":
            say("== the worker pods: containers of the project's image on the real node")
            say(stack.kubectl.run("get", "pods", "-o", "wide").stdout.rstrip())
        if keep:
            say("\nEverything is still running. In another shell:")
            say(f"   export KUBECONFIG={stack.kubectl.cluster.kubeconfig}")
            say(f"   export PATH={stack.kubectl.cluster.binaries.bin_dir}:$PATH")
            say(f"   export RABBITMQ_URL='{stack.rabbitmq.endpoints.amqp_url}'")
            say("   kubectl get menv; matchenv scrape --synthetic 100")
            say("Press Ctrl-C to stop it all.")
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
        return 0
    except Exception as exc:
        say(f"demo failed: {exc}")
        return 1
    finally:
        say("== stopping everything")
        shutdown()

"""Step: the environment's worker Deployment — built from the spec and the Secrets' hash, applied only when it
drifted, observed for ``WorkersReady`` (and why a pod is not ready); stopped, its pods waited for, at deletion."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from matchenv.contracts import DATABASE_KEY_SETS, WORKER_SECRET_PASSWORD
from matchenv.operator import builders
from matchenv.operator.context import Context, Services
from matchenv.operator.errors import TeardownIncomplete, api_message, describe
from matchenv.operator.kube import Obj
from matchenv.operator.status import WorkersObservation, unready_pods, unready_reason
from matchenv.operator.steps.topology import TopologyOutcome
from matchenv.operator.tenancy import not_owned, owned_by
from matchenv.topology.planner import Refusal

log = logging.getLogger("matchenv.operator")


def converge_workers(s: Services, ctx: Context, topology: TopologyOutcome) -> tuple[WorkersObservation,
                                                                                    Refusal | None]:
    """The worker Deployment: ours only (an ownerReference to this environment), no pods while the topology is
    refused, and an API refusal reported rather than retried blindly. Returns what the workers look like and the
    problem that keeps them from working, if any."""
    names = ctx.names
    db_problem, db_secret = database_problem(s, ctx)
    live = ctx.prefetched.deployments.get((ctx.namespace, names.deployment)) if ctx.prefetched else None
    if live is None:
        live = s.kube.get_deployment(ctx.namespace, names.deployment)
    if live is not None and not owned_by(live, ctx.uid):
        return WorkersObservation(exists=False), Refusal("DeploymentNotOwned",
                                                          not_owned("Deployment", ctx.namespace, names.deployment))
    if live is None and not topology.secret_data.get(WORKER_SECRET_PASSWORD):
        # no broker credentials yet (the broker not reached, or the queue refused): a Deployment made now would be
        # rolled again as soon as they exist; its first revision waits for them
        return observe_workers(s, None), db_problem
    replicas = 0 if topology.refused or ctx.spec.paused else ctx.spec.workers.replicas
    secrets_hash = builders.secret_data_hash(topology.secret_data, (db_secret or {}).get("data"))
    # what the Deployment is built from, and the version of it found to match: the same again, it still matches
    # (a quiet pass at 2,000 environments spent a fifth of its converges building and comparing them)
    inputs = (hash(json.dumps(ctx.env.get("spec"), sort_keys=True)), replicas, secrets_hash)
    if live is not None and s.workers_in_sync.get(ctx.uid) == (live["metadata"].get("resourceVersion"), inputs):
        return observe_workers(s, live), db_problem
    deployment = builders.build_deployment(names, ctx.spec, ctx.owner_reference, replicas, secrets_hash)
    # list responses carry no apiVersion/kind on their items: compare what we own, metadata and spec
    differs = None if live is None else builders.drift(
        {"metadata": deployment["metadata"], "spec": deployment["spec"]}, live
    )
    if live is None or differs:
        try:
            applied = s.kube.apply_deployment(deployment)
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise
            # reported (status and a Warning event) like every refusal, by the status step
            message = f"the API server refused Deployment {names.deployment}: {api_message(exc)}"
            return observe_workers(s, live), Refusal("DeploymentRefused", message)
        _say_what_changed(s, ctx, live, applied, differs, replicas)
        live = applied
    s.workers_in_sync[ctx.uid] = (live["metadata"].get("resourceVersion"), inputs)
    return observe_workers(s, live), db_problem


def _say_what_changed(s: Services, ctx: Context, live: Obj | None, applied: Obj, differs: str | None,
                      replicas: int) -> None:
    deployment = ctx.names.deployment
    if live is None:
        s.event(ctx.env, "DeploymentCreated", f"created Deployment {deployment}")
    elif differs == ".spec.replicas":  # kubectl scale on the Deployment: say where its size comes from
        owner = "the autoscaler sets (autoscaling.enabled)" if ctx.spec.autoscaling.enabled else \
            f"kubectl scale menv/{ctx.name} changes"
        s.event(ctx.env, "DeploymentRescaled", f"set Deployment {deployment} back to {replicas} replicas: its size is "
                f"the MatchEnvironment's spec.workers.replicas, which {owner}", "Warning")
    elif applied["metadata"].get("resourceVersion") != live["metadata"].get("resourceVersion"):
        s.event(ctx.env, "DeploymentUpdated", f"updated Deployment {deployment} ({differs} differed)")


def database_problem(s: Services, ctx: Context) -> tuple[Refusal | None, Obj | None]:
    """The database Secret the workers read, and why it will not do (missing, or without a usable key set)."""
    name = ctx.spec.workers.database_secret_ref.name
    secret = s.secret(ctx.namespace, name, ctx.prefetched)
    if secret is None:
        return Refusal("DatabaseSecretInvalid", f"database Secret {name} not found"), None
    keys = set((secret.get("data") or {}).keys())
    if not any(set(option) <= keys for option in DATABASE_KEY_SETS):
        return Refusal("DatabaseSecretInvalid", f"database Secret {name} needs DATABASE_URL, or SUPABASE_URL "
                       "with SUPABASE_KEY or SUPABASE_SERVICE_KEY"), secret
    return None, secret


def counts(deployment: Obj | None) -> WorkersObservation:
    """The Deployment's replica counts (updated ones only once its controller saw the current generation)."""
    if deployment is None:
        return WorkersObservation(exists=False)
    spec: dict[str, Any] = deployment.get("spec") or {}
    status: dict[str, Any] = deployment.get("status") or {}
    generation_seen = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    return WorkersObservation(
        exists=True,
        replicas=int(spec.get("replicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)) if generation_seen else 0,
    )


def observe_workers(s: Services, deployment: Obj | None) -> WorkersObservation:
    """The Deployment's counts and, while a pod is not ready, why (its container's state, else its readiness
    probe's last words in the kubelet's Unhealthy event): a read of the pods and of one pod's events, only then."""
    seen = counts(deployment)
    if deployment is None or not seen.exists or seen.replicas == 0 or seen.ready_replicas >= seen.replicas:
        return seen
    namespace = deployment["metadata"].get("namespace", "")
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    try:
        pods = s.kube.list_pods(namespace, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        for pod in unready_pods(pods)[:3]:
            why = unready_reason(pod, []) or unready_reason(pod, s.kube.list_events(
                namespace, f"involvedObject.kind=Pod,involvedObject.name={pod['metadata']['name']},"
                "reason=Unhealthy"))
            if why:
                return dataclasses.replace(seen, why=why)
    except ApiException as exc:  # only the detail is missing
        log.debug("cannot read why the workers of %s are not ready: %s", namespace, describe(exc))
    return seen


def stop_workers(s: Services, ctx: Context, wait: float) -> bool:
    """Delete the worker Deployment (foreground) and wait up to ``wait`` seconds until its pods are gone, so that
    every worker ends its in-flight message with its credentials still valid; raises :class:`TeardownIncomplete`
    (retried) while they run. Returns whether it waited for any pod (the queue may have changed meanwhile)."""
    live = s.kube.get_deployment(ctx.namespace, ctx.names.deployment)
    if live is None or not owned_by(live, ctx.uid):
        return False
    first = not live["metadata"].get("deletionTimestamp")
    running = (live.get("status") or {}).get("replicas")
    if first and not running and (live.get("spec") or {}).get("replicas", 1) == 0 and \
            not s.kube.list_pods(ctx.namespace, ctx.names.selector):
        # none wanted and none running: nothing will use the credentials, so the Deployment goes at once (background:
        # a foreground deletion is three writes and three watch events for each, in a burst of deletions)
        s.kube.delete_deployment(ctx.namespace, ctx.names.deployment, live["metadata"]["uid"], foreground=False)
        return False
    if first:
        s.kube.delete_deployment(ctx.namespace, ctx.names.deployment, live["metadata"]["uid"])
    # listed after the delete: a pod its ReplicaSet started meanwhile is seen and waited for
    if not running and not s.kube.list_pods(ctx.namespace, ctx.names.selector):
        # no worker pod at all (none wanted, or gone already): nothing can be using the credentials; the garbage
        # collector removes the Deployment in its own time (waiting for it held a converge thread for seconds each:
        # 300 environments deleted at once took minutes)
        return False
    if first:
        s.event(ctx.env, "WorkersStopping", f"deleting Deployment {ctx.names.deployment}; the broker user is "
                "removed once its pods have finished")
    deadline = s.clock() + wait
    while s.clock() < deadline:  # most workers finish within seconds: wait here rather than retry
        time.sleep(0.5)
        if s.kube.get_deployment(ctx.namespace, ctx.names.deployment) is None:
            return True
    raise TeardownIncomplete(f"waiting for the pods of Deployment {ctx.names.deployment} to finish", delay=2.0)

"""Pure status computation: what the operator saw → ``status`` with phase and conditions.

Conditions keep their ``lastTransitionTime`` while their status stays the same, so a resync that changes nothing
writes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from matchenv.api import Phase
from matchenv.topology.planner import QueueObservation, Refusal


@dataclass(frozen=True)
class WorkersObservation:
    exists: bool
    replicas: int = 0  # desired, from the Deployment spec
    ready_replicas: int = 0
    updated_replicas: int = 0
    why: str = ""  # why a pod is not ready, in its own words (see unready_reason)


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile learned about an environment."""

    generation: int | None
    exchange: str
    queue: str
    selector: str
    topology: QueueObservation | None  # None: the broker could not be read
    workers: WorkersObservation
    problems: tuple[str, ...] = ()
    broker_error: str | None = None
    error_reason: str | None = None  # e.g. "BrokerUnreachable"
    refusal: Refusal | None = None  # e.g. QueueClaimed: this environment may not have what it names
    worker_problem: Refusal | None = None  # e.g. DatabaseSecretInvalid, DeploymentRefused
    autoscaling: dict[str, Any] | None = None  # status.autoscaling, None while autoscaling is off
    paused: bool = False  # spec.paused: no workers run, messages wait
    subset_of: str | None = None  # the fanout exchange whose topic exchange (``exchange``) the queue is bound to
    routing_keys: tuple[str, ...] = ()
    backfill: dict[str, Any] | None = None  # status.backfill, None without spec.backfill
    backfill_condition: tuple[bool, str, str] | None = None  # BackfillComplete (ok, reason, message)
    length_cap: int = 0  # the administrator's maximum queue length (MATCHENV_MAX_QUEUE_LENGTH), 0: none
    placement: dict[str, str] | None = None  # status.placement; None: as it was
    events_secret: str | None = None  # status.eventsSecret ("": none); None: as it was
    events_problem: str | None = None  # Flower's Secret is someone else's
    expires_at: str | None = None  # status.expiresAt (spec.expireAfter), None: removed
    dead_letter_request: dict[str, Any] | None = None  # status.deadLetterRequest, None: removed
    pause: dict[str, Any] | None = None  # status.pause, None: removed
    detached: bool = False  # paused in Unbind mode: the queue is to be off the feed
    credentials: dict[str, Any] | None = None  # status.credentials; None: as it was


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    return rfc3339(dt.datetime.now(dt.UTC))


def parse_rfc3339(text: object) -> dt.datetime | None:
    """A timestamp as the API server writes it ('2026-12-03T16:00:00Z'); None when absent or not one."""
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _condition(old: dict[str, dict[str, Any]], type_: str, ok: bool, reason: str, message: str,
               generation: int | None, now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    previous = old.get(type_)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    condition = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def condition_of(status: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """``status``'s condition of ``type_``; {} when it has none."""
    return _by_type(status or {}).get(type_, {})


def set_condition(status: dict[str, Any] | None, type_: str, ok: bool, reason: str, message: str,
                  now: str | None = None) -> list[dict[str, Any]]:
    """``status``'s conditions with ``type_`` set to ``ok`` (its time kept while its status stays the same)."""
    old = _by_type(status or {})
    condition = _condition(old, type_, ok, reason, message, None, now or now_rfc3339())
    return [c for t, c in old.items() if t != type_] + [condition]


def topology_condition(seen: Observation) -> tuple[bool, str, str]:
    if seen.refusal:
        return False, seen.refusal.reason, seen.refusal.message
    if seen.broker_error:
        return False, seen.error_reason or "BrokerError", seen.broker_error
    if seen.problems:
        return False, "BrokerConflict", "; ".join(seen.problems)
    if seen.events_problem:
        return False, "SecretNotOwned", seen.events_problem
    if seen.topology is None or not seen.topology.exists:
        return False, "QueueMissing", f"queue {seen.queue} does not exist yet"
    if seen.detached:
        if seen.topology.bound:
            return False, "Unbinding", f"paused (pauseMode Unbind): queue {seen.queue} is being unbound from " \
                f"{seen.exchange}"
        return True, "Unbound", f"paused (pauseMode Unbind): queue {seen.queue} is not bound to {seen.exchange}, " \
            "so no backlog grows; on resume it is bound again and what it missed is replayed from the archive"
    if not seen.topology.bound:
        return False, "BindingMissing", f"queue {seen.queue} is not bound to {seen.exchange} yet"
    bound = f"queue {seen.queue} is bound to {seen.exchange}"
    if seen.subset_of:
        bound += (f" with keys {', '.join(seen.routing_keys)} (a topic exchange bound to {seen.subset_of}; messages "
                  "published with an empty routing key, as protocol-1 producers send them, do not reach it)")
    elif seen.routing_keys:
        bound += f" with keys {', '.join(seen.routing_keys)}"
    topo = seen.topology
    if topo.offline:
        members = (f"quorum queue {seen.queue} has {topo.running} of its "
                   f"{len(topo.members)} members running ({', '.join(topo.offline)} not)")
        if not topo.has_quorum:
            return False, "QuorumLost", (f"{members}: without a majority it takes and delivers no messages; "
                                         "publishers wait for confirms until enough nodes are back")
        bound += f"; {members}: it still has a quorum"
    if seen.topology.messages is None:
        return True, "Converged", (f"{bound}; the broker reports no message counts for it, so they are unknown and "
                                   "autoscaling holds")
    if seen.length_cap and seen.topology.messages >= seen.length_cap:
        bound += (f"; it holds {seen.topology.messages} messages, the operator's maximum queue length "
                  f"(MATCHENV_MAX_QUEUE_LENGTH={seen.length_cap}): the oldest are dropped as new ones arrive")
    return True, "Converged", bound


def workers_condition(seen: Observation) -> tuple[bool, str, str]:
    if seen.worker_problem:
        return False, seen.worker_problem.reason, seen.worker_problem.message
    if seen.paused:
        w = seen.workers
        left = f"; {w.replicas} still stopping" if w.replicas else ""
        held = "the queue takes nothing meanwhile (pauseMode Unbind)" if seen.detached else \
            f"messages wait in queue {seen.queue}"
        return True, "Paused", f"paused (spec.paused): no workers run, {held}{left}"
    return _workers_state(seen.workers)


def _workers_state(w: WorkersObservation) -> tuple[bool, str, str]:
    if not w.exists:
        return False, "DeploymentMissing", "the worker Deployment does not exist yet"
    if w.replicas == 0:
        return True, "ScaledToZero", "no workers wanted"
    if w.ready_replicas >= w.replicas and w.updated_replicas >= w.replicas:
        return True, "WorkersAvailable", f"{w.ready_replicas}/{w.replicas} workers ready"
    return False, "WorkersUnavailable", f"{w.ready_replicas}/{w.replicas} workers ready" + (
        f"; {w.why}" if w.why else "")


READINESS_FAILED = "Readiness probe failed: "  # how the kubelet's Unhealthy event begins, before the probe's output


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def unready_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The running (not terminating) pods that are not ready, by name."""
    return sorted((p for p in pods if not _pod_ready(p) and not (p.get("metadata") or {}).get("deletionTimestamp")),
                  key=lambda p: str(p["metadata"]["name"]))


def unready_reason(pod: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """Why ``pod`` is not ready, in its own words: a container waiting (CrashLoopBackOff, a missing Secret...) or
    terminated with a message, else the newest readiness probe failure among ``events`` (the worker's probe prints
    why, e.g. "holding messages: the database refuses every write ..."); "" when nothing says."""
    name = pod["metadata"]["name"]
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") and waiting.get("reason") != "ContainerCreating":
            return f"pod {name}: {waiting['reason']}" + (f": {waiting['message']}" if waiting.get("message") else "")
        last = (status.get("lastState") or {}).get("terminated") or {}
        if waiting and last.get("message"):
            return f"pod {name}: last exit {last.get('exitCode')}: {str(last['message']).strip()[:300]}"
    failures = [e for e in events if (e.get("involvedObject") or {}).get("name") == name
                and str(e.get("message", "")).startswith(READINESS_FAILED)]
    if not failures:
        return ""
    newest = max(failures, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime")
                                              or (e.get("metadata") or {}).get("creationTimestamp") or ""))
    return f"pod {name}: {str(newest['message'])[len(READINESS_FAILED):].strip()[:500]}"


def _by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _ready(topology: tuple[bool, str, str], workers: tuple[bool, str, str], paused: bool = False
           ) -> tuple[bool, str, str]:
    """The Ready condition from TopologyReady and WorkersReady: the first that is not True gives its reason."""
    if topology[0] and workers[0] and not paused:
        return True, "Ready", "topology converged and workers available"
    return (False, *topology[1:]) if not topology[0] else (False, *workers[1:])


def build_status(seen: Observation, old_status: dict[str, Any] | None, now: str | None = None) -> dict[str, Any]:
    """The full ``status`` for ``seen``; counts the broker could not report are carried over from ``old_status``."""
    old_status = old_status or {}
    now = now or now_rfc3339()
    old = _by_type(old_status)
    topo_ok, topo_reason, topo_msg = topology_condition(seen)
    work_ok, work_reason, work_msg = workers_condition(seen)
    ready, ready_reason, ready_msg = _ready((topo_ok, topo_reason, topo_msg), (work_ok, work_reason, work_msg),
                                            seen.paused)
    conditions = [
        _condition(old, "TopologyReady", topo_ok, topo_reason, topo_msg, seen.generation, now),
        _condition(old, "WorkersReady", work_ok, work_reason, work_msg, seen.generation, now),
        _condition(old, "Ready", ready, ready_reason, ready_msg, seen.generation, now),
    ]
    if seen.backfill_condition is not None:
        conditions.append(_condition(old, "BackfillComplete", *seen.backfill_condition, seen.generation, now))
    if ready:
        phase = Phase.READY
    elif seen.broker_error or seen.problems or seen.events_problem or seen.refusal or seen.worker_problem:
        phase = Phase.DEGRADED
    elif seen.paused and topo_ok:
        phase = Phase.PAUSED
    elif old_status.get("phase") in (Phase.READY.value, Phase.DEGRADED.value) and not topo_ok:
        phase = Phase.DEGRADED  # something that existed went missing and is being repaired
    else:
        phase = Phase.PENDING
    bound = seen.topology is not None and seen.topology.bound
    errors = [seen.refusal.message if seen.refusal else None, seen.broker_error, *seen.problems,
              seen.events_problem, seen.worker_problem.message if seen.worker_problem else None]
    status: dict[str, Any] = {
        "phase": phase.value,
        # what the broker did, not what the spec asks: the exchange the queue is bound to
        "exchange": seen.exchange if bound else (old_status.get("exchange") if seen.topology is None else None),
        "queue": seen.queue,
        "selector": seen.selector,
        "replicas": seen.workers.replicas,
        "readyReplicas": seen.workers.ready_replicas,
        "ready": f"{seen.workers.ready_replicas}/{seen.workers.replicas}",
        "lastError": "; ".join(filter(None, errors)) or None,
        "conditions": conditions,
        "autoscaling": seen.autoscaling,
        "backfill": replacing(seen.backfill, old_status.get("backfill")),
        "pause": replacing(seen.pause, old_status.get("pause")),
        "credentials": seen.credentials if seen.credentials is not None else old_status.get("credentials"),
        "expiresAt": seen.expires_at,
        "deadLetterRequest": seen.dead_letter_request,
    }
    if seen.generation is not None:
        status["observedGeneration"] = seen.generation
    placement = seen.placement if seen.placement is not None else old_status.get("placement")
    if placement is not None:
        status["placement"] = placement
    events_secret = seen.events_secret if seen.events_secret is not None else old_status.get("eventsSecret")
    status["eventsSecret"] = events_secret or None  # None: removed by the merge patch
    if seen.topology is not None:
        status["messages"] = seen.topology.messages
        status["consumers"] = seen.topology.consumers
        status["deadLetterMessages"] = seen.topology.dead_letter_messages
        oldest = seen.topology.oldest_published
        status["oldestMessageTime"] = None if oldest is None else rfc3339(
            dt.datetime.fromtimestamp(oldest, dt.UTC))
        topo = seen.topology
        status["quorum"] = {"members": list(topo.members), "online": list(topo.online), "leader": topo.leader,
                            "hasQuorum": topo.has_quorum} if topo.members else None
    else:
        for key in ("messages", "consumers", "deadLetterMessages", "oldestMessageTime", "quorum"):
            if key in old_status:
                status[key] = old_status[key]
    return status


# WorkersReady reasons that come from the Deployment alone (the others name a problem a converge found)
DEPLOYMENT_REASONS = frozenset({"DeploymentMissing", "ScaledToZero", "WorkersAvailable", "WorkersUnavailable"})


def refresh_workers(old_status: dict[str, Any], workers: WorkersObservation, generation: int | None,
                    now: str | None = None) -> dict[str, Any] | None:
    """``old_status`` with WorkersReady, Ready, the phase and the replica counts as ``workers`` (the Deployment as
    it is now) makes them, the rest as the last converge left it; None when that status is not one this can
    follow (another generation's, or a problem a converge must look at again)."""
    now = now or now_rfc3339()
    old = _by_type(old_status)
    topology, current = old.get("TopologyReady"), old.get("WorkersReady")
    if topology is None or current is None or current.get("reason") not in DEPLOYMENT_REASONS \
            or old_status.get("observedGeneration") != generation or old_status.get("lastError"):
        return None
    topo_ok = topology.get("status") == "True"
    work_ok, work_reason, work_msg = _workers_state(workers)
    ready, ready_reason, ready_msg = _ready(
        (topo_ok, str(topology.get("reason")), str(topology.get("message", ""))), (work_ok, work_reason, work_msg))
    conditions = [topology, _condition(old, "WorkersReady", work_ok, work_reason, work_msg, generation, now),
                  _condition(old, "Ready", ready, ready_reason, ready_msg, generation, now),
                  *(c for t, c in old.items() if t not in ("TopologyReady", "WorkersReady", "Ready"))]
    phase = Phase.READY.value if ready else old_status.get("phase") if not topo_ok else Phase.PENDING.value
    return {**old_status, "phase": phase, "conditions": conditions, "replicas": workers.replicas,
            "readyReplicas": workers.ready_replicas, "ready": f"{workers.ready_replicas}/{workers.replicas}"}


def status_changed(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether writing ``new`` (a merge patch: a None removes) would change anything the operator owns in ``old``."""
    old = old or {}
    return any(old.get(k) != _pruned(v) for k, v in new.items())


def _pruned(value: Any) -> Any:
    """``value`` as the API server keeps it after a merge patch: without the keys set to None."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def replacing(new: dict[str, Any] | None, old: Any) -> dict[str, Any] | None:
    """``new`` as a merge patch that replaces ``old`` (an object of status) whole: None for each key of ``old`` it
    lacks, at every depth; a merge patch would otherwise keep them (e.g. an earlier Job's completionTime)."""
    if new is None or not isinstance(old, dict):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        patch[key] = replacing(value, old.get(key)) if isinstance(value, dict) else value
    return patch

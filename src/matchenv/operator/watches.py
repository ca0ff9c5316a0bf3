"""What the watches tell the orchestrator: which environment a removed broker object belonged to
(:class:`OwnerIndex`), and whether a change to a worker Deployment or a backfill Job of ours calls for a converge or
only a status refresh (:class:`Sightings`). Pure bookkeeping: the orchestrator acts on the answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from matchenv.api import KIND
from matchenv.operator.backfills import job_state
from matchenv.operator.context import Context
from matchenv.operator.drift import Changed
from matchenv.operator.kube import Obj


class OwnerIndex:
    """What each environment on the operator's broker owns there → (namespace, name): a broker event names one."""

    def __init__(self) -> None:
        self._owned: dict[Changed, tuple[str, str]] = {}
        self._owns: dict[str, tuple[Changed, ...]] = {}  # uid → its keys in _owned

    def remember(self, ctx: Context) -> None:
        self.forget(ctx.uid)
        if not ctx.own_broker:
            return
        scope = ctx.desired.scope()
        keys = (*(Changed("queue", scope.vhost, q) for q in scope.queues),
                # its dead-letter exchange only: the shared exchange's deletion also deletes each queue's binding
                *((Changed("exchange", scope.vhost, ctx.names.dead_letter_exchange),) if ctx.spec.queue.dead_letter
                  else ()),
                # the shared topic exchange of a subset: any one of its environments' converges puts it back
                *(Changed("exchange", scope.vhost, e) for e in scope.exchange_bindings),
                *(Changed("policy", scope.vhost, p) for p in scope.policies),
                *(Changed("user", "", u) for u in scope.users))
        self._owns[ctx.uid] = keys
        for key in keys:
            self._owned[key] = (ctx.namespace, ctx.name)

    def forget(self, uid: str) -> None:
        for key in self._owns.pop(uid, ()):
            self._owned.pop(key, None)

    def owner_of(self, what: Changed) -> tuple[str, str] | None:
        return self._owned.get(what)


@dataclass(frozen=True)
class Follow:
    """An environment to look at again: ``converge`` it, or only ``refresh`` its workers' status."""

    namespace: str
    name: str
    uid: str
    how: Literal["converge", "refresh"]


def environment_owner(meta: Obj) -> Obj | None:
    """The ownerReference to the MatchEnvironment an object of ours belongs to, if any."""
    return next((r for r in meta.get("ownerReferences") or [] if r.get("kind") == KIND), None)


class Sightings:
    """The last state seen of each worker Deployment and backfill Job of ours. The first sight of each (the watch
    starting) only records it: the resume handlers converge everything then."""

    def __init__(self) -> None:
        self._workers: dict[str, tuple[Any, ...]] = {}  # Deployment uid → what of it WorkersReady reads
        self._jobs: dict[str, str] = {}  # backfill Job uid → Running, Complete or Failed

    def deployment(self, deployment: Obj, deleted: bool = False) -> Follow | None:
        """A converge when the Deployment was deleted (put back at once) or its spec changed (maybe by hand); a
        refresh when only what WorkersReady reads moved (pods became ready, a rollout ended); else nothing."""
        meta = deployment.get("metadata") or {}
        owner, uid = environment_owner(meta), meta.get("uid", "")
        if owner is None or not uid:
            return None
        status = deployment.get("status") or {}
        seen = (meta.get("generation"), (deployment.get("spec") or {}).get("replicas"), status.get("replicas"),
                status.get("readyReplicas"), status.get("updatedReplicas"), status.get("availableReplicas"),
                status.get("observedGeneration"))
        before = self._workers.get(uid)
        if deleted:
            self._workers.pop(uid, None)
        else:
            self._workers[uid] = seen
            if before is None or before == seen:
                return None
        spec_changed = deleted or before is None or before[0] != seen[0]
        return Follow(meta.get("namespace", ""), owner.get("name", ""), owner.get("uid", ""),
                      "converge" if spec_changed else "refresh")

    def job(self, job: Obj, deleted: bool = False) -> Follow | None:
        """A converge when a backfill Job ended or went, so status and the next attempt do not wait for the
        resync."""
        meta = job.get("metadata") or {}
        owner, uid = environment_owner(meta), meta.get("uid", "")
        if owner is None or not uid:
            return None
        state = "Deleted" if deleted else job_state(job)
        before = self._jobs.get(uid)
        if deleted:
            self._jobs.pop(uid, None)
        else:
            self._jobs[uid] = state
        if before is None or state in ("Running", before):
            return None
        return Follow(meta.get("namespace", ""), owner.get("name", ""), owner.get("uid", ""), "converge")

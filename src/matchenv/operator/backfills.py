"""One environment's backfill: its Secret, its one-shot Job, and what ``status.backfill`` and the
``BackfillComplete`` condition say of it.

A backfill is a request (a digest of ``spec.backfill``): its start instant is fixed when the operator first sees it
(``since`` counts back from then), and its Job starts only once the environment's queue is bound, so the archive's
end at the Job's start covers everything the queue did not get directly. A Job that fails (its pods retried) is
reported with the reason its pod gave, and a new one starts after a back-off; a changed ``spec.backfill`` replaces
it; a removed one deletes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matchenv.api import BackfillPhase, BackfillSpec, MatchEnvironmentSpec
from matchenv.naming import BACKFILL_COMPONENT, COMPONENT_LABEL, ENV_LABEL, REPLAY_LABEL, EnvironmentNames
from matchenv.operator import builders
from matchenv.operator.extra_users import extra_user_password
from matchenv.operator.kube import Kube
from matchenv.operator.status import rfc3339
from matchenv.operator.tenancy import owned_by

log = logging.getLogger("matchenv.operator")
Obj = dict[str, Any]
RETRY_FIRST_SECONDS = 30.0
RETRY_MAX_SECONDS = 1800.0


def request_digest(spec: BackfillSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
                          ).hexdigest()[:16]


@dataclass(frozen=True)
class Replay:
    """A kind of replay of the archive into the queue: spec.backfill's, or a pause's catch-up
    (:mod:`matchenv.operator.pause`). Each follows its own Jobs and its own status."""

    kind: str  # the Jobs' REPLAY_LABEL value
    word: str  # its Events' reasons begin with it: BackfillStarted, CatchUpComplete, ...
    job_name: Callable[[EnvironmentNames, str, int], str]
    waiting: str = ""  # why it waits while the queue is unbound ("" : for the queue to be bound)


BACKFILL = Replay("backfill", "Backfill", EnvironmentNames.backfill_job)
CATCH_UP = Replay("catch-up", "CatchUp", EnvironmentNames.catch_up_job)


def _attempt(job: Obj, names: EnvironmentNames, replay: Replay, request: str) -> int | None:
    """The attempt number of a Job of ``request`` (its name ends ``-<n>``), None for another request's."""
    prefix = replay.job_name(names, request, 0)[:-1]
    name = str(job["metadata"]["name"])
    return int(name[len(prefix):]) if name.startswith(prefix) and name[len(prefix):].isdigit() else None


def _job_start(job: Obj) -> str | None:
    """The instant a backfill Job replays from (its ``--from`` argument)."""
    for container in ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
        args = list(container.get("args") or [])
        if "--from" in args[:-1]:
            return str(args[args.index("--from") + 1])
    return None


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def retry_delay(attempts: int) -> float:
    return float(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, attempts - 1)))


def job_state(job: Obj) -> str:
    """Complete, Failed or Running, from the Job's conditions."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return "Running"


def termination(pods: list[Obj]) -> tuple[dict[str, Any], str]:
    """What the Job's last finished pod said (``matchenv backfill`` writes one JSON object), and the kubelet's
    reason when it said nothing (e.g. OOMKilled, DeadlineExceeded)."""
    finished = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (status.get("state") or {}).get("terminated")
            if ended:
                finished.append((str(ended.get("finishedAt") or ""), ended))
    if not finished:
        return {}, ""
    _, ended = max(finished, key=lambda f: f[0])
    try:
        said = json.loads(ended.get("message") or "")
    except ValueError:
        said = {}
    reason = f"exit code {ended.get('exitCode')} ({ended.get('reason') or 'Error'})"
    return (said if isinstance(said, dict) else {}), reason


@dataclass(frozen=True)
class BackfillOutcome:
    status: Obj | None  # status.backfill; None: no backfill asked for
    ok: bool = False
    reason: str = ""
    message: str = ""


class Backfills:
    def __init__(self, kube: Kube, event: Callable[[Obj, str, str, str], None],
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.kube = kube
        self.event = event
        self.now = now

    @staticmethod
    def selector(names: EnvironmentNames) -> str:
        return f"{ENV_LABEL}={names.name},{COMPONENT_LABEL}={BACKFILL_COMPONENT}"

    def password(self, env: Obj, names: EnvironmentNames, owner: Obj, broker_url: str, vhost: str, uid: str) -> str:
        """The backfill user's password, from Secret ``<env>-backfill`` (raises
        :class:`~matchenv.operator.extra_users.SecretNotOwned`)."""
        return extra_user_password(
            self.kube, names.namespace, names.backfill_secret, uid,
            lambda password: builders.build_backfill_secret(names, owner, broker_url, password, vhost), "the backfill")

    def converge(self, env: Obj, spec: MatchEnvironmentSpec, names: EnvironmentNames, owner: Obj, archive: str,
                 bound: bool, delivered_so_far: int | None, archive_problem: str | None,
                 secret_problem: str | None = None) -> BackfillOutcome:
        """Move spec.backfill's replay one step on; what status.backfill says of it."""
        old: Obj = (env.get("status") or {}).get("backfill") or {}
        if spec.backfill is None:
            self._delete(env, self._jobs(env, names, BACKFILL), keep=None, replay=BACKFILL)
            return BackfillOutcome(None)
        request = request_digest(spec.backfill)
        state: Obj = dict(old) if old.get("request") == request else {
            "request": request, "phase": BackfillPhase.PENDING.value, "attempts": 0,
            "from": rfc3339(spec.backfill.start(self.now()))}
        return self.follow(BACKFILL, env, spec, names, owner, archive, state, bound, delivered_so_far,
                           archive_problem, secret_problem)

    def catch_up(self, env: Obj, spec: MatchEnvironmentSpec, names: EnvironmentNames, owner: Obj, archive: str,
                 owed: Obj, bound: bool, detached: bool, delivered_so_far: int | None,
                 archive_problem: str | None, secret_problem: str | None = None) -> BackfillOutcome:
        """Move a pause's catch-up (``owed``, status.pause.catchUp as planned by :mod:`matchenv.operator.pause`) one
        step on; its Jobs of an earlier request go (a completed one's stays until the next pause)."""
        replay = CATCH_UP if not detached else Replay(
            CATCH_UP.kind, CATCH_UP.word, CATCH_UP.job_name,
            waiting=f"paused (pauseMode Unbind): replays what queue {names.queue} misses, from {owed.get('from')}, "
            "once the environment is resumed")
        return self.follow(replay, env, spec, names, owner, archive, dict(owed), bound and not detached,
                           delivered_so_far, archive_problem, secret_problem)

    def follow(self, replay: Replay, env: Obj, spec: MatchEnvironmentSpec, names: EnvironmentNames, owner: Obj,
               archive: str, state: Obj, bound: bool, delivered_so_far: int | None, archive_problem: str | None,
               secret_problem: str | None) -> BackfillOutcome:
        """One replay (``state``: its request, start and progress as last written) one step on."""
        jobs = self._jobs(env, names, replay)
        request = str(state["request"])
        now = self.now()
        word = replay.word
        current = next((j for j in jobs if j["metadata"]["name"] == state.get("job")), None)
        if current is None:
            # status older than the Jobs (a converge that read the environment before another wrote it): the
            # newest Job of this request is the one in progress, never a reason to start another
            ours = {attempt: j for j in jobs if (attempt := _attempt(j, names, replay, request)) is not None}
            if ours:
                attempt = max(ours)
                current = ours[attempt]
                state.update(job=current["metadata"]["name"], attempts=attempt, phase=BackfillPhase.RUNNING.value,
                             **{"from": _job_start(current) or state["from"]})
        start = state["from"]
        self._delete(env, jobs, keep=current, replay=replay)  # a previous request's Job
        phase = state["phase"]
        if secret_problem:
            state.update(phase=BackfillPhase.PENDING.value, message=secret_problem)
            return BackfillOutcome(state, False, "SecretNotOwned", secret_problem)
        if archive_problem:
            state.update(phase=BackfillPhase.PENDING.value, message=archive_problem)
            return BackfillOutcome(state, False, "ArchiveUnavailable", archive_problem)
        if phase == BackfillPhase.COMPLETE.value:
            return BackfillOutcome(state, True, "Completed", state.get("message") or "")
        if current is not None and phase == BackfillPhase.RUNNING.value:
            finished = job_state(current)
            if finished == "Running":
                if delivered_so_far is not None:
                    state["delivered"] = delivered_so_far
                message = f"Job {current['metadata']['name']} replaying the archive from {start}" + (
                    f"; {state['delivered']} delivered so far" if state.get("delivered") is not None else "")
                state["message"] = message
                return BackfillOutcome(state, False, "Running", message)
            said, kubelet = termination(self.kube.list_pods(names.namespace, f"job-name={current['metadata']['name']}"))
            if finished == "Complete":
                delivered = said.get("delivered")
                message = f"delivered {delivered if delivered is not None else 'the'} archived matches from " \
                          f"{start} (Job {current['metadata']['name']})"
                state.update(phase=BackfillPhase.COMPLETE.value, completionTime=rfc3339(now), message=message,
                             delivered=delivered)
                state.pop("retryTime", None)
                self.event(env, f"{word}Complete", message, "Normal")
                return BackfillOutcome(state, True, "Completed", message)
            why = said.get("message") or _job_failure(current) or kubelet or "the Job failed"
            retry = now + dt.timedelta(seconds=retry_delay(int(state.get("attempts") or 1)))
            message = f"Job {current['metadata']['name']} failed: {why}; a new one starts at {rfc3339(retry)}"
            state.update(phase=BackfillPhase.FAILED.value, retryTime=rfc3339(retry), message=message)
            self.event(env, f"{word}Failed", message, "Warning")
            return BackfillOutcome(state, False, "BackfillFailed", message)
        if not bound:
            message = replay.waiting or f"waiting for queue {names.queue} to be bound before replaying the archive"
            state.update(phase=BackfillPhase.PENDING.value, message=message)
            return BackfillOutcome(state, False, "WaitingForQueue", message)
        if phase == BackfillPhase.FAILED.value:
            retry_at = _parse(state.get("retryTime"))
            if retry_at is not None and now < retry_at:
                return BackfillOutcome(state, False, "BackfillFailed", state.get("message") or "")
            if current is not None:
                self._delete(env, [current], keep=None, replay=replay)
        attempts = int(state.get("attempts") or 0) + 1
        job = replay.job_name(names, request, attempts)
        body = builders.build_backfill_job(names, spec, owner, job, archive, start,
                                           mandatory=not spec.queue.routing_keys, replay=replay.kind)
        existing = next((j for j in jobs if j["metadata"]["name"] == job), None)
        if existing is None:
            self.kube.create_job(body)
            self.event(env, f"{word}Started", f"started Job {job}: the archive {archive} from {start} into queue "
                       f"{names.queue} (attempt {attempts})", "Normal")
        message = f"Job {job} replaying the archive from {start}"
        state.update(phase=BackfillPhase.RUNNING.value, job=job, attempts=attempts, startTime=rfc3339(now),
                     message=message, delivered=None)
        state.pop("retryTime", None)
        return BackfillOutcome(state, False, "Running", message)

    def stop(self, env: Obj, names: EnvironmentNames) -> list[str]:
        """Delete every replay Job of the environment (its deletion)."""
        return self._delete(env, self._jobs(env, names, None), keep=None, replay=BACKFILL)

    def _jobs(self, env: Obj, names: EnvironmentNames, replay: Replay | None) -> list[Obj]:
        """The environment's Jobs of ``replay`` (None: of any); a Job of that name someone else made is not one."""
        return [j for j in self.kube.list_jobs(names.namespace, self.selector(names))
                if owned_by(j, env["metadata"]["uid"]) and (replay is None or _kind(j) == replay.kind)]

    def _delete(self, env: Obj, jobs: list[Obj], keep: Obj | None, replay: Replay) -> list[str]:
        done = []
        for job in jobs:
            meta = job["metadata"]
            if (keep is not None and meta["uid"] == keep["metadata"]["uid"]) or meta.get("deletionTimestamp"):
                continue
            if self.kube.delete_job(meta["namespace"], meta["name"], meta["uid"]):
                done.append(f"deleted Job {meta['name']}")
        if done:
            self.event(env, f"{replay.word}Stopped", "; ".join(done), "Normal")
        return done


def _kind(job: Obj) -> str:
    """Which replay a Job is (a Job made before the label: spec.backfill's)."""
    return str(((job.get("metadata") or {}).get("labels") or {}).get(REPLAY_LABEL) or BACKFILL.kind)


def _job_failure(job: Obj) -> str:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"{condition.get('reason') or ''} {condition.get('message') or ''}".strip()
    return ""

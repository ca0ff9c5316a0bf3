"""In-memory stand-ins for the unit tier: a broker that applies plan actions to a snapshot, and a Kubernetes seam
that keeps objects in dicts. The integration and e2e tiers run the same code against real RabbitMQ and a real API
server; these only let the pure planner and the reconciler be tested in milliseconds."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import uuid
from collections import Counter
from typing import Any

from kubernetes.client.exceptions import ApiException

from matchenv.topology.client import BrokerError, BrokerNotFound, BrokerUnreachable
from matchenv.topology.snapshot import Binding, BrokerSnapshot, Exchange, Permission, Policy, Queue, Scope, User
from matchenv.topology.tally import count_call

Obj = dict[str, Any]


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 format: base64(salt[4] + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def merge_patch(target: Obj, patch: Obj) -> None:
    """RFC 7386: None removes a key, a dict merges into a dict, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class SimulatedBroker:
    """Applies actions to an in-memory snapshot the way RabbitMQ does (a queue re-declared keeps its arguments),
    so a unit test can plan again after applying. ``put_users`` counts password writes per user."""

    def __init__(self, snapshot: BrokerSnapshot | None = None) -> None:
        s = snapshot or BrokerSnapshot.empty()
        self.queues = dict(s.queues)
        self.exchanges = dict(s.exchanges)
        self.bindings = list(s.bindings)
        self.policies = dict(s.policies)
        self.users = dict(s.users)
        self.permissions = dict(s.permissions)
        self.operator_policies: dict[tuple[str, str], Policy] = {}
        self.put_users: Counter[str] = Counter()
        self.down = False
        self.calls = 0
        self.version: str | None = None  # as /api/overview reports it

    def _call(self) -> None:
        self.calls += 1
        count_call()
        if self.down:
            raise BrokerUnreachable("simulated broker is down", "GET /api/overview")

    def snapshot(self, scope: Scope | None = None) -> BrokerSnapshot:
        """The whole broker, or (as the management client reads it) only what ``scope`` names."""
        self._call()
        full = BrokerSnapshot(dict(self.queues), dict(self.exchanges), tuple(self.bindings), dict(self.policies),
                              dict(self.users), dict(self.permissions), self.version)
        if scope is None:
            return full
        v = scope.vhost
        queues = {k: q for k, q in full.queues.items() if k in {(v, n) for n in scope.queues}}
        exchanges = {k: e for k, e in full.exchanges.items() if k in {(v, n) for n in scope.exchanges}}
        unclaimed = scope.claimants and any(not q.claimed_by_cluster for q in queues.values())
        users = {k: u for k, u in full.users.items() if k in scope.users or (k in scope.legacy_users and unclaimed)}
        return BrokerSnapshot(
            queues, exchanges,
            tuple(b for b in full.bindings if ((b.vhost, b.destination) in queues and b.destination_type == "queue"
                                              and (scope.bindings_of is None or b.destination in scope.bindings_of))
                  or (b.destination_type == "exchange" and b.destination in scope.exchange_bindings
                  and (b.vhost, b.destination) in exchanges)
                  or (b.vhost == v and b.source in scope.source_bindings)),
            {k: p for k, p in full.policies.items() if k in {(v, n) for n in scope.policies}},
            users,
            {k: p for k, p in full.permissions.items() if p.vhost == v and (unclaimed or p.user in users)},
            self.version)

    def declare_exchange(self, vhost: str, name: str, type_: str, durable: bool = True,
                         arguments: dict[str, Any] | None = None) -> None:
        self._call()
        self.exchanges.setdefault((vhost, name), Exchange(vhost, name, type_, durable, dict(arguments or {})))

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._call()
        del self.exchanges[(vhost, name)]
        self.bindings = [b for b in self.bindings if b.vhost != vhost or name not in (b.source, b.destination)
                         or (b.destination_type == "queue" and b.destination == name)]

    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None:
        self._call()
        self.queues.setdefault((vhost, name), Queue(vhost, name, arguments["x-queue-type"], durable, dict(arguments)))

    def delete_queue(self, vhost: str, name: str, if_empty: bool = False) -> None:
        self._call()
        if if_empty and self.queues[(vhost, name)].messages:
            raise BrokerError(f"queue {name} in vhost {vhost} not empty", f"DELETE /api/queues/{vhost}/{name}", 400)
        del self.queues[(vhost, name)]
        self.bindings = [b for b in self.bindings if (b.vhost, b.destination) != (vhost, name)]

    def bind_queue(self, vhost: str, exchange: str, queue: str, routing_key: str = "") -> None:
        self._call()
        if (vhost, exchange) not in self.exchanges or (vhost, queue) not in self.queues:  # as RabbitMQ answers
            raise BrokerNotFound(f"POST /api/bindings: 404 no exchange {exchange!r} or queue {queue!r}")
        binding = Binding(vhost, exchange, queue, "queue", routing_key, routing_key or "~")
        if binding not in self.bindings:
            self.bindings.append(binding)

    def bind_exchange(self, vhost: str, source: str, destination: str, routing_key: str = "") -> None:
        self._call()
        if (vhost, source) not in self.exchanges or (vhost, destination) not in self.exchanges:
            raise BrokerNotFound(f"POST /api/bindings: 404 no exchange {source!r} or {destination!r}")
        binding = Binding(vhost, source, destination, "exchange", routing_key, routing_key or "~")
        if binding not in self.bindings:
            self.bindings.append(binding)

    def unbind_queue(self, vhost: str, exchange: str, queue: str, properties_key: str) -> None:
        self._call()
        self.bindings = [b for b in self.bindings
                         if (b.vhost, b.source, b.destination, b.properties_key) != (vhost, exchange, queue,
                                                                                     properties_key)]

    def put_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any], priority: int,
                   apply_to: str = "queues") -> None:
        self._call()
        self.policies[(vhost, name)] = Policy(vhost, name, pattern, apply_to, definition, priority)

    def delete_policy(self, vhost: str, name: str) -> None:
        self._call()
        del self.policies[(vhost, name)]

    def get_operator_policy(self, vhost: str, name: str) -> Policy | None:
        self._call()
        return self.operator_policies.get((vhost, name))

    def put_operator_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any],
                            priority: int) -> None:
        self._call()
        self.operator_policies[(vhost, name)] = Policy(vhost, name, pattern, "queues", definition, priority)

    def delete_operator_policy(self, vhost: str, name: str) -> None:
        self._call()
        del self.operator_policies[(vhost, name)]

    def put_user(self, name: str, password: str, tags: Any = ()) -> None:
        self._call()
        self.put_users[name] += 1
        self.users[name] = User(name, password_hash=password_hash(password))

    def delete_user(self, name: str) -> None:
        self._call()
        del self.users[name]
        self.permissions = {k: v for k, v in self.permissions.items() if k[0] != name}

    def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        self._call()
        self.permissions[(user, vhost)] = Permission(user, vhost, configure, write, read)

    def clear_permissions(self, vhost: str, user: str) -> None:
        self._call()
        self.permissions.pop((user, vhost), None)


def _api_error(status: int, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason={404: "Not Found", 422: "Unprocessable Entity"}.get(status, "Error"))
    exc.body = json.dumps({"message": message})
    return exc


def _encode(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


class FakeKube:
    """The operator's Kubernetes seam over dicts: Secrets, Deployments, MatchEnvironments, events. Applies merge
    ``stringData`` into ``data`` and bump ``resourceVersion`` only when something changed, as the API server does."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], Obj] = {}
        self.deployments: dict[tuple[str, str], Obj] = {}
        self.deployment_deletions: list[tuple[str, str, str]] = []  # namespace, name, propagation policy
        self.environments: dict[tuple[str, str], Obj] = {}
        self.jobs: dict[tuple[str, str], Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}  # (namespace, job name) → its one pod
        self.events: list[tuple[str, str, str]] = []  # (environment, reason, message)
        self.worker_pods: dict[tuple[str, str], list[Obj]] = {}  # (namespace, label selector) → pods
        self.pod_events: list[Obj] = []  # the kubelet's events about pods
        self.writes: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()  # reads of one object, by kind
        self.refuse_deployments: str | None = None  # a message: apply_deployment answers 422 with it
        self._rv = 0

    def may_write(self, what: str, target: str = "kubernetes") -> None:
        self.writes[f"{target}-any"] += 1

    def _bump(self, obj: Obj) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    # MatchEnvironments
    def add_environment(self, namespace: str, name: str, spec: Obj, annotations: Obj | None = None) -> Obj:
        env = {"apiVersion": "matchenv.io/v1alpha1", "kind": "MatchEnvironment",
               "metadata": {"namespace": namespace, "name": name, "uid": str(uuid.uuid4()), "generation": 1,
                            "annotations": dict(annotations or {})},
               "spec": copy.deepcopy(spec)}
        self._bump(env)
        self.environments[(namespace, name)] = env
        return env

    def environment(self, namespace: str, name: str) -> Obj:
        return copy.deepcopy(self.environments[(namespace, name)])

    def get_environment(self, namespace: str, name: str) -> Obj | None:
        self.reads["environment"] += 1
        found = self.environments.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def list_environments(self, namespace: str | None = None) -> list[Obj]:
        return [copy.deepcopy(e) for (ns, _), e in sorted(self.environments.items()) if namespace in (None, ns)]

    def patch_environment_status(self, namespace: str, name: str, status: Obj) -> None:
        self.writes["status"] += 1
        env = self.environments[(namespace, name)]
        merge_patch(env.setdefault("status", {}), status)

    def patch_environment(self, namespace: str, name: str, patch: Obj) -> None:
        """As the API server: 404 when gone, 409 when the patch names another resourceVersion, 422 for a finalizer
        added to an object being deleted."""
        env = self.environments.get((namespace, name))
        if env is None:
            raise _api_error(404)
        meta, wanted = env["metadata"], patch.get("metadata") or {}
        if wanted.get("resourceVersion") not in (None, meta.get("resourceVersion")):
            raise _api_error(409, "the object has been modified")
        if meta.get("deletionTimestamp") and set(wanted.get("finalizers") or ()) - set(meta.get("finalizers") or ()):
            raise _api_error(422, "no new finalizers can be added if the object is being deleted")
        merge_patch(env, {**patch, "metadata": {k: v for k, v in wanted.items() if k != "resourceVersion"}}
                     if "metadata" in patch else patch)
        self._bump(env)

    def delete_environment(self, namespace: str, name: str, uid: str) -> bool:
        """As the API server: marks it deleted while a finalizer holds it (the delete handler's to finish), else it
        is gone at once."""
        env = self.environments.get((namespace, name))
        if env is None or env["metadata"]["uid"] != uid:
            return False
        if not env["metadata"].get("finalizers"):
            del self.environments[(namespace, name)]
            return True
        env["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
        self._bump(env)
        return True

    # Secrets
    def add_secret(self, namespace: str, name: str, data: dict[str, str], owner_uid: str | None = None,
                   labels: dict[str, str] | None = None) -> Obj:
        meta: Obj = {"namespace": namespace, "name": name, "uid": str(uuid.uuid4()), "labels": dict(labels or {})}
        if owner_uid:
            meta["ownerReferences"] = [{"uid": owner_uid, "kind": "MatchEnvironment", "name": name}]
        secret = {"metadata": meta, "data": _encode(data)}
        self._bump(secret)
        self.secrets[(namespace, name)] = secret
        return secret

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        found = self.secrets.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def list_secrets(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        key, _, value = label_selector.partition("=")
        return [copy.deepcopy(s) for (ns, _), s in self.secrets.items()
                if namespace in (None, ns) and s["metadata"].get("labels", {}).get(key) == value]

    def apply_secret(self, body: Obj) -> Obj:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.secrets.get(key)
        new = {"metadata": {**copy.deepcopy(meta), "uid": old["metadata"]["uid"] if old else str(uuid.uuid4())},
               "data": _encode(body["stringData"])}
        if old is None or (old["data"], old["metadata"].get("annotations")) != (new["data"],
                                                                               new["metadata"].get("annotations")):
            self.writes["secret"] += 1
            self._bump(new)
            self.secrets[key] = new
        return copy.deepcopy(self.secrets[key])

    def delete_secret(self, namespace: str, name: str, uid: str) -> bool:
        found = self.secrets.get((namespace, name))
        if found is None or found["metadata"]["uid"] != uid:
            return False
        del self.secrets[(namespace, name)]
        return True

    # Deployments
    def list_deployments(self, label_selector: str, namespace: str | None = None) -> list[Obj]:
        return [copy.deepcopy(d) for (ns, _), d in self.deployments.items() if namespace in (None, ns)]

    def get_deployment(self, namespace: str, name: str) -> Obj | None:
        found = self.deployments.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def edit_deployment(self, namespace: str, name: str) -> Obj:
        """The Deployment as a person's ``kubectl edit`` or ``kubectl scale`` changes it: a new resourceVersion
        (the API server's on every write); the caller changes the object returned."""
        live = self.deployments[(namespace, name)]
        self._bump(live)
        return live

    def apply_deployment(self, body: Obj) -> Obj:
        if self.refuse_deployments:
            raise _api_error(422, self.refuse_deployments)
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.deployments.get(key)
        if old is None or old["spec"] != body["spec"] or old["metadata"].get("labels") != meta.get("labels"):
            self.writes["deployment"] += 1
            new = copy.deepcopy(body)
            new["metadata"]["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
            new["metadata"]["generation"] = (old["metadata"].get("generation", 0) if old else 0) + 1
            new["status"] = (old or {}).get("status", {})
            self._bump(new)
            self.deployments[key] = new
        return copy.deepcopy(self.deployments[key])

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.writes["deployment-scale"] += 1
        self.deployments[(namespace, name)]["spec"]["replicas"] = replicas

    def delete_deployment(self, namespace: str, name: str, uid: str, foreground: bool = True) -> bool:
        """Foreground: marked deleting until :meth:`finish_deletions`; background: gone at once."""
        found = self.deployments.get((namespace, name))
        if found is None or found["metadata"]["uid"] != uid:
            return False
        self.deployment_deletions.append((namespace, name, "Foreground" if foreground else "Background"))
        if foreground:
            found["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        else:
            del self.deployments[(namespace, name)]
        return True

    def finish_deletions(self) -> None:
        """What the garbage collector does once the pods are gone."""
        self.deployments = {k: d for k, d in self.deployments.items() if not d["metadata"].get("deletionTimestamp")}

    def list_jobs(self, namespace: str, label_selector: str) -> list[Obj]:
        wanted = dict(part.split("=", 1) for part in label_selector.split(","))
        return [copy.deepcopy(j) for (ns, _), j in self.jobs.items() if ns == namespace
                and all(j["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]

    def create_job(self, body: Obj) -> Obj:
        meta = body["metadata"]
        if (meta["namespace"], meta["name"]) in self.jobs:
            raise _api_error(409, f"jobs.batch {meta['name']!r} already exists")
        job = copy.deepcopy(body)
        job["metadata"]["uid"] = str(uuid.uuid4())
        job["status"] = {}
        self.jobs[(meta["namespace"], meta["name"])] = job
        return copy.deepcopy(job)

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        job = self.jobs.get((namespace, name))
        if job is None or job["metadata"]["uid"] != uid:
            return False
        del self.jobs[(namespace, name)]
        self.pods.pop((namespace, name), None)
        return True

    def finish_job(self, namespace: str, name: str, state: str, message: str) -> None:
        """The Job ends (Complete or Failed) and its pod with the termination message ``message``."""
        self.jobs[(namespace, name)]["status"] = {"conditions": [{"type": state, "status": "True"}]}
        self.pods[(namespace, name)] = {"status": {"containerStatuses": [{"state": {"terminated": {
            "exitCode": 0 if state == "Complete" else 1, "message": message,
            "finishedAt": "2026-01-01T00:00:00Z"}}}]}}

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        if label_selector.startswith("job-name="):
            pod = self.pods.get((namespace, label_selector.removeprefix("job-name=")))
            return [copy.deepcopy(pod)] if pod else []
        if (namespace, label_selector) in self.worker_pods:
            return copy.deepcopy(self.worker_pods[(namespace, label_selector)])
        # otherwise the pods a Deployment of that selector has, as its controllers would keep them once rolled out:
        # one per replica, of its template, until the garbage collector has removed the Deployment
        wanted = dict(part.split("=", 1) for part in label_selector.split(","))
        return [{"metadata": {"namespace": namespace, "name": f"{name}-{i}", "labels": wanted,
                              "annotations": copy.deepcopy(d["spec"]["template"]["metadata"].get("annotations"))}}
                for (ns, name), d in self.deployments.items() if ns == namespace
                and (d["spec"].get("selector") or {}).get("matchLabels") == wanted
                for i in range(d["spec"].get("replicas") or 0)]

    def list_events(self, namespace: str, field_selector: str) -> list[Obj]:
        wanted = dict(part.split("=", 1) for part in field_selector.split(","))
        return [copy.deepcopy(e) for e in self.pod_events
                if e["metadata"]["namespace"] == namespace and wanted.get("reason", e["reason"]) == e["reason"]
                and wanted.get("involvedObject.name", e["involvedObject"]["name"]) == e["involvedObject"]["name"]]

    def post_event(self, env: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append((env["metadata"]["name"], reason, message))

    def events_held(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class FakeClients:
    """``BrokerClients`` for the reconciler: one simulated broker per management URL, whatever the credentials;
    a connection whose password is not in ``passwords`` gets a 401, as RabbitMQ would answer."""

    def __init__(self, broker: SimulatedBroker, passwords: set[str]) -> None:
        self.broker = broker
        self.passwords = passwords
        self.others: dict[str, SimulatedBroker] = {}  # management URL → another broker (``broker`` is the rest)

    def get(self, conn: Any) -> Any:
        if conn.password not in self.passwords:
            return _Refusing()
        return self.others.get(conn.management_url, self.broker)

    def total_calls(self) -> int:
        return self.broker.calls + sum(b.calls for b in self.others.values())

    def evict_idle(self, idle: float) -> int:
        return 0


class _Refusing:
    """A broker client whose credentials the broker refuses."""

    def __getattr__(self, name: str) -> Any:
        def refuse(*_: Any, **__: Any) -> Any:
            from matchenv.topology.client import BrokerAuthError

            raise BrokerAuthError(f"{name}: 401 Unauthorized", name, 401)

        return refuse

"""The one RabbitMQ management-HTTP client. Nothing else in matchenv speaks HTTP to the broker.

One ``requests.Session`` per client (connection reuse), a total deadline on every call (connect, headers and body
together, not only per read), a bound on the body's size, vhosts and names URL-encoded, and typed errors that say
what failed, cut short and never echoing the credentials. :meth:`ManagementClient.snapshot` reads everything the
reconciler needs in a fixed number of calls, whatever the number of environments.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from matchenv.contracts import split_urls
from matchenv.topology.snapshot import Binding, BrokerSnapshot, Exchange, Permission, Policy, Queue, Scope, User
from matchenv.topology.tally import carried, count_call
from matchenv.write_fence import SendCheck, fence

DEFAULT_TIMEOUT = (3.05, 10.0)  # (connect, total) seconds: the second bounds the whole call
# a management answer larger than this is refused, not read into memory: parsed, JSON takes several times its size,
# and the operator's memory limit is 384 MiB (a broker of 20,000 queues answers /api/queues in about 6 MiB)
MAX_BODY = 16 * 1024 * 1024
MAX_ERROR_TEXT = 300
READ_TRIES = 2  # a GET whose connection dropped or that was answered 5xx: once more (see _request_node)
MIN_RETRY_SECONDS = 0.5  # less than this left of a call's deadline: no second try
PARALLEL_CALLS = 8  # management calls in flight at once per broker (the converge pool runs up to 8 at once)
QUEUE_COLUMNS = (
    "name,vhost,type,durable,arguments,messages,messages_ready,messages_unacknowledged,consumers,policy,"
    "head_message_timestamp,members,online,leader"
)


class BrokerError(Exception):
    """A management-API call failed. ``operation`` says which, e.g. ``PUT /api/queues/%2F/matches.dev``."""

    def __init__(self, message: str, operation: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.status = status


class BrokerUnreachable(BrokerError):
    """No answer: connection refused, DNS failure, timeout, or a 5xx from the management plugin."""


class NodeUnreachable(BrokerUnreachable):
    """This node did not answer at all (refused, reset, timed out): another node of the cluster may."""


class BrokerAuthError(BrokerError):
    """401/403: wrong credentials or a user without the administrator tag."""


class BrokerConflict(BrokerError):
    """400 PRECONDITION_FAILED and friends: e.g. a queue re-declared with other arguments or another type."""


class BrokerNotFound(BrokerError):
    """404: the vhost, queue, exchange, user or binding does not exist."""


class _Adapter(requests.adapters.HTTPAdapter):
    """``requests``' adapter whose pools (a proxy's too) ask ``check_send`` before each write leaves."""

    def __init__(self, check_send: SendCheck | None, **kwargs: Any) -> None:
        self.check_send = check_send
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        if self.check_send is not None:
            fence(self.poolmanager, self.check_send)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        made = proxy not in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **kwargs)
        if made and self.check_send is not None:
            fence(manager, self.check_send)
        return manager


def _session(check_send: SendCheck | None = None) -> requests.Session:
    """A session whose connection pool keeps one connection per parallel call."""
    session = requests.Session()
    # the environment read once, here (the proxies per node in ManagementClient): requests would otherwise scan
    # it for proxies and CA bundles at every call (~0.2 ms of CPU each, 20 calls per new environment)
    session.trust_env = False
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = _Adapter(check_send, pool_connections=1, pool_maxsize=PARALLEL_CALLS)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _q(part: str) -> str:
    return quote(part, safe="")


@dataclass
class _Call:
    """One management call under way: what it asks, its one deadline (monotonic) and where it was sent last."""

    method: str
    path: str
    body: Any
    params: dict[str, str] | None
    operation: str
    connect: float
    deadline: float
    sent: float = 0.0  # when it was sent last (monotonic)
    node: int = 0
    base: str = ""
    future: Future[tuple[requests.Response, bytes]] | None = None


class ManagementClient:
    """Typed access to the RabbitMQ management API of one broker: one node, or a cluster's nodes (``base_url`` lists
    them, ``;``-separated). Calls go to the node that answered last; a node that does not answer is left for the
    next, within the call's one deadline."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        write_budget: Callable[[], float | None] | None = None,
        check_send: SendCheck | None = None,
    ) -> None:
        self.base_urls = [url.rstrip("/") for url in split_urls(base_url)] or [base_url.rstrip("/")]
        self._node = 0  # the node calls go to
        # each node's proxies from the environment (HTTP(S)_PROXY, NO_PROXY), as requests would find them per call
        self._proxies = {url: requests.utils.get_environ_proxies(url) for url in self.base_urls}
        self.timeout = timeout
        # how long a write may take from now (the leader's Lease: no write still under way once another replica
        # may lead); None: the timeout alone
        self.write_budget = write_budget
        # asked again right before each write's first byte leaves (:mod:`matchenv.write_fence`); may raise
        self.check_send = check_send
        self.session = session or _session(check_send)
        self.session.auth = (username, password)
        self.session.headers["content-type"] = "application/json"
        self.calls = 0  # management calls made; the reconciler reports it per interval
        self._counting = threading.Lock()  # the handlers' converges call from several threads at once
        self._version: str | None = None  # the broker's, read once
        # each call runs on one of these threads so that the caller can stop waiting at the deadline, even for a
        # server that trickles its headers (requests' timeouts are per socket read); several, because the handlers
        # converge environments in parallel (one thread made every converge wait for the others' calls)
        self._runner = ThreadPoolExecutor(max_workers=PARALLEL_CALLS, thread_name_prefix="management")
        # a whole snapshot's second read, made while the first is under way
        self._beside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="management-beside")

    def close(self) -> None:
        self._runner.shutdown(wait=False)
        self._beside.shutdown(wait=False)
        self.session.close()

    def _abandon(self) -> None:
        """After a deadline: leave the stalled call to its thread (it ends at its next read timeout) and carry on
        with a fresh session and thread."""
        stalled, self._runner = self._runner, ThreadPoolExecutor(max_workers=PARALLEL_CALLS,
                                                                 thread_name_prefix="management")
        stalled.shutdown(wait=False)
        fresh = _session(self.check_send)
        fresh.auth, fresh.headers = self.session.auth, self.session.headers
        self.session.close()
        self.session = fresh

    @property
    def base_url(self) -> str:
        """The node calls go to now."""
        return self.base_urls[self._node]

    # -- transport -------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        return self._finish(self._start(method, path, body, params))

    def _start(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> _Call:
        """Send one call to the current node; :meth:`_finish` waits for its answer (and tries the next nodes)."""
        with self._counting:
            self.calls += 1
        count_call()
        connect, total = self.timeout
        budget = self.write_budget() if self.write_budget is not None and method != "GET" else None
        if budget is not None:
            total = max(0.1, min(total, budget))
        call = _Call(method, path, body, params, f"{method} {path}", connect, time.monotonic() + total)
        self._send(call, self._node, len(self.base_urls))
        return call

    def _finish(self, call: _Call) -> Any:
        down: list[str] = []
        count = len(self.base_urls)
        for tried in range(count):
            try:
                return self._answer(call)
            except NodeUnreachable as exc:
                down.append(str(exc))
                # every declare, binding and removal is idempotent: the next node may take the same call (moved on
                # once, however many converges beside this one found this node down)
                if self._node == call.node:
                    self._node = (call.node + 1) % count
                if tried == count - 1 or call.deadline - time.monotonic() < 0.2:
                    break
                self._send(call, self._node, count - tried - 1)
        if len(self.base_urls) == 1 or len(down) == 1:
            raise NodeUnreachable(down[0], call.operation)
        raise NodeUnreachable(f"{call.operation}: no node answered ({'; '.join(d.split(': ', 1)[-1] for d in down)})",
                              call.operation)

    def _reads(self, paths: list[str]) -> list[Any]:
        """GETs of ``paths`` side by side (all sent before the first answer is awaited: a new environment's
        snapshot was eight calls one after another); each answer, or None for a 404."""
        calls = [self._start("GET", path) for path in paths]
        answers = []
        for call in calls:
            try:
                answers.append(self._finish(call))
            except BrokerNotFound:
                answers.append(None)
        return answers

    def _send(self, call: _Call, node: int, nodes_left: int) -> None:
        """Start ``call`` on node ``node`` by its deadline. A socket read may wait this node's share of what is left
        (all of it for the last node to try): a node that stalls leaves the others time to answer, and a lone node
        that answers slowly within the deadline is not cut off (RabbitMQ 4.0.5 answers GET /api/overview and
        /api/definitions after 5 s now and then)."""
        base = self.base_urls[node]
        call.node, call.base, call.sent = node, base, time.monotonic()
        call.future = self._runner.submit(self._exchange, call, base, nodes_left, self.session)

    def _exchange(self, call: _Call, base: str, nodes_left: int, session: requests.Session
                  ) -> tuple[requests.Response, bytes]:
        method, deadline = call.method, call.deadline

        def once(left: float) -> tuple[requests.Response, bytes]:
            response = session.request(method, base + call.path, json=call.body, params=call.params,
                                       proxies=self._proxies[base], stream=True,
                                       timeout=(min(call.connect, left), max(1.0, left / nodes_left)))
            try:
                content = _read_body(response, deadline)
            except BaseException:
                response.close()  # a half-read connection is never reused
                raise
            response.raw.release_conn()
            return response, content

        # a read is tried again, while time is left, when the connection dropped (a kept-alive one the broker closed
        # meanwhile) or the answer was a 5xx: RabbitMQ 4.0's GET /api/definitions fails with a 500 when a user is
        # deleted while it reads them, and the broker then closes that connection
        for _ in range(READ_TRIES - 1 if method == "GET" else 0):
            if deadline - time.monotonic() < MIN_RETRY_SECONDS:
                break
            try:
                response, content = once(deadline - time.monotonic())
            except requests.ConnectionError as exc:
                if isinstance(exc, requests.Timeout):
                    raise
                continue
            if response.status_code < 500:
                return response, content
        return once(max(0.1, deadline - time.monotonic()))

    def _answer(self, call: _Call) -> Any:
        """The answer of ``call`` as sent last (:meth:`_send`), by its deadline, or the error it makes."""
        operation, base, future = call.operation, call.base, call.future
        assert future is not None
        try:
            try:
                response, content = future.result(timeout=max(0.1, call.deadline - time.monotonic()) + 0.5)
            except FutureTimeout as exc:
                if not future.cancel():  # under way: left to its thread; one never begun holds nothing
                    self._abandon()
                raise TimeoutError from exc
        except (requests.Timeout, TimeoutError) as exc:
            total = max(0.1, call.deadline - call.sent)
            raise NodeUnreachable(f"{operation}: no complete answer within {total:.0f}s from {base}",
                                  operation) from exc
        except requests.RequestException as exc:
            raise NodeUnreachable(f"{operation}: broker unreachable at {base} ({exc.__class__.__name__})",
                                  operation) from exc
        except _BodyTooLarge as exc:
            raise BrokerConflict(f"{operation}: the answer is larger than {MAX_BODY} bytes", operation) from exc
        status = response.status_code
        if status < 300:
            if not content:
                return None
            try:
                return json.loads(content)
            except ValueError as exc:
                raise BrokerUnreachable(f"{operation}: the answer is not JSON (is {base} the management "
                                        "API?)", operation, status) from exc
        message = f"{operation}: {status} {self._redact(_reason(response.reason, content))}"
        if status in (401, 403):
            raise BrokerAuthError(message, operation, status)
        if status == 404:
            raise BrokerNotFound(message, operation, status)
        if status >= 500:
            raise BrokerUnreachable(message, operation, status)
        raise BrokerConflict(message, operation, status)

    def _redact(self, text: str) -> str:
        """Error text as reported: cut short, and the password never repeated."""
        password = self.session.auth[1] if isinstance(self.session.auth, tuple) else ""
        if password:
            text = text.replace(str(password), "***")
        return text[:MAX_ERROR_TEXT]

    # -- reads -----------------------------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/api/overview")
        return result

    def list_queues(self) -> list[Queue]:
        rows = self._request("GET", "/api/queues", params={"columns": QUEUE_COLUMNS})
        return [Queue.from_api(r) for r in rows]

    def get_queue(self, vhost: str, name: str) -> Queue:
        return Queue.from_api(self._request("GET", f"/api/queues/{_q(vhost)}/{_q(name)}"))

    def list_exchanges(self) -> list[Exchange]:
        rows = self._request("GET", "/api/exchanges", params={"columns": "name,vhost,type,durable,arguments"})
        return [Exchange.from_api(r) for r in rows]

    def list_bindings(self) -> list[Binding]:
        return [Binding.from_api(r) for r in self._request("GET", "/api/bindings")]

    def list_policies(self) -> list[Policy]:
        return [Policy.from_api(r) for r in self._request("GET", "/api/policies")]

    def list_users(self) -> list[User]:
        return [User.from_api(r) for r in self._request("GET", "/api/users")]

    def list_permissions(self) -> list[Permission]:
        return [Permission.from_api(r) for r in self._request("GET", "/api/permissions")]

    def server_version(self) -> str | None:
        """The broker's RabbitMQ version (read once per client: a broker changes version only by restarting, and
        a client follows one broker)."""
        if self._version is None:
            overview = self._request("GET", "/api/overview", params={"columns": "rabbitmq_version"}) or {}
            self._version = str(overview.get("rabbitmq_version") or "") or None
        return self._version

    def snapshot(self, scope: Scope | None = None) -> BrokerSnapshot:
        """Everything the planner compares against: the whole broker in two calls side by side (its definitions,
        and the queues with their message counts), or, with ``scope``, only the objects it names (a constant
        number of small calls; all the vhost's permissions only when a queue lacks its ownership marker: its
        claimant is found among them)."""
        if scope is not None:
            return self._scoped(scope)
        # side by side: the broker renders its queues (with their counts) while it renders its definitions
        queues = self._beside.submit(carried(self.list_queues))
        definitions = self._request("GET", "/api/definitions") or {}
        return BrokerSnapshot.build(
            queues=queues.result(),
            exchanges=[Exchange.from_api(r) for r in definitions.get("exchanges", [])],
            bindings=[Binding.from_api(r) for r in definitions.get("bindings", [])],
            policies=[Policy.from_api(r) for r in definitions.get("policies", [])],
            users=[User.from_api(r) for r in definitions.get("users", [])],
            permissions=[Permission.from_api(r) for r in definitions.get("permissions", [])],
            version=self.server_version(),
        )

    def _scoped(self, scope: Scope) -> BrokerSnapshot:
        """Two rounds of reads side by side: the named objects, then what hangs on those found (their bindings and
        permissions)."""
        v = _q(scope.vhost)
        named = ([f"/api/queues/{v}/{_q(n)}" for n in scope.queues]
                 + [f"/api/exchanges/{v}/{_q(n)}" for n in scope.exchanges]
                 + [f"/api/policies/{v}/{_q(n)}" for n in scope.policies]
                 + [f"/api/users/{_q(n)}" for n in scope.users])
        rows = iter(self._reads(named))
        queues = [Queue.from_api(r) for _ in scope.queues if (r := next(rows)) is not None]
        exchanges = [Exchange.from_api(r) for _ in scope.exchanges if (r := next(rows)) is not None]
        policies = [Policy.from_api(r) for _ in scope.policies if (r := next(rows)) is not None]
        users = [User.from_api(r) for _ in scope.users if (r := next(rows)) is not None]
        present = {e.name for e in exchanges}
        # a queue, exchange or user gone between the two rounds has no bindings or permissions: read as none
        hanging = ([f"/api/queues/{v}/{_q(q.name)}/bindings" for q in queues
                    if scope.bindings_of is None or q.name in scope.bindings_of]
                   + [f"/api/exchanges/{v}/{_q(n)}/bindings/destination" for n in scope.exchange_bindings
                      if n in present]
                   + [f"/api/exchanges/{v}/{_q(n)}/bindings/source" for n in scope.source_bindings])
        if scope.claimants and any(not q.claimed_by_cluster for q in queues):
            # a queue without a cluster's marker (adopted, or declared by an older version): its claimant is
            # whoever's permissions read exactly it, so every permission of the vhost is needed (rare: the marker
            # is usual), and the users named as before the cluster identity
            legacy = [f"/api/users/{_q(n)}" for n in scope.legacy_users]
            answers = self._reads(hanging + legacy + [f"/api/vhosts/{v}/permissions"])
            users += [User.from_api(r) for r in answers[len(hanging):-1] if r is not None]
            permission_rows = answers[-1] or []
        else:
            answers = self._reads(hanging + [f"/api/permissions/{v}/{_q(u.name)}" for u in users])
            permission_rows = [r for r in answers[len(hanging):] if r is not None]
        bindings = [Binding.from_api(r) for rows_of in answers[:len(hanging)] for r in rows_of or []]
        permissions = [Permission.from_api(r) for r in permission_rows]
        return BrokerSnapshot.build(queues, exchanges, bindings, policies, users, permissions,
                                    version=self.server_version())

    def _get_or_none(self, path: str) -> Any:
        return self._reads([path])[0]

    # -- writes ----------------------------------------------------------------------------------------------
    def put_vhost(self, name: str) -> None:
        self._request("PUT", f"/api/vhosts/{_q(name)}", {})

    def delete_vhost(self, name: str) -> None:
        self._request("DELETE", f"/api/vhosts/{_q(name)}")

    def declare_exchange(self, vhost: str, name: str, type_: str, durable: bool = True,
                         arguments: dict[str, Any] | None = None) -> None:
        self._request("PUT", f"/api/exchanges/{_q(vhost)}/{_q(name)}",
                      {"type": type_, "durable": durable, "auto_delete": False, "internal": False,
                       "arguments": arguments or {}})

    def delete_exchange(self, vhost: str, name: str) -> None:
        self._request("DELETE", f"/api/exchanges/{_q(vhost)}/{_q(name)}")

    def declare_queue(self, vhost: str, name: str, arguments: dict[str, Any], durable: bool = True) -> None:
        self._request("PUT", f"/api/queues/{_q(vhost)}/{_q(name)}",
                      {"durable": durable, "auto_delete": False, "arguments": arguments})

    def delete_queue(self, vhost: str, name: str, if_empty: bool = False) -> None:
        """Delete the queue; with ``if_empty`` the broker refuses (400) while it holds a message."""
        self._request("DELETE", f"/api/queues/{_q(vhost)}/{_q(name)}" + ("?if-empty=true" if if_empty else ""))

    def bind_queue(self, vhost: str, exchange: str, queue: str, routing_key: str = "") -> None:
        self._request("POST", f"/api/bindings/{_q(vhost)}/e/{_q(exchange)}/q/{_q(queue)}",
                      {"routing_key": routing_key, "arguments": {}})

    def bind_exchange(self, vhost: str, source: str, destination: str, routing_key: str = "") -> None:
        self._request("POST", f"/api/bindings/{_q(vhost)}/e/{_q(source)}/e/{_q(destination)}",
                      {"routing_key": routing_key, "arguments": {}})

    def unbind_queue(self, vhost: str, exchange: str, queue: str, properties_key: str) -> None:
        """``properties_key`` "": a binding with arguments read from the definitions; every such binding between
        the two is looked up and removed."""
        path = f"/api/bindings/{_q(vhost)}/e/{_q(exchange)}/q/{_q(queue)}"
        keys = [properties_key] if properties_key else \
            [r["properties_key"] for r in self._request("GET", path) or [] if r.get("arguments")]
        for key in keys:
            self._request("DELETE", f"{path}/{_q(key)}")

    def put_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any], priority: int,
                   apply_to: str = "queues") -> None:
        self._request("PUT", f"/api/policies/{_q(vhost)}/{_q(name)}",
                      {"pattern": pattern, "definition": definition, "priority": priority, "apply-to": apply_to})

    def delete_policy(self, vhost: str, name: str) -> None:
        self._request("DELETE", f"/api/policies/{_q(vhost)}/{_q(name)}")

    def get_operator_policy(self, vhost: str, name: str) -> Policy | None:
        row = self._get_or_none(f"/api/operator-policies/{_q(vhost)}/{_q(name)}")
        return Policy.from_api(row) if row is not None else None

    def put_operator_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any],
                            priority: int) -> None:
        """An operator policy: combined with every queue's own policy, the lower limit winning."""
        self._request("PUT", f"/api/operator-policies/{_q(vhost)}/{_q(name)}",
                      {"pattern": pattern, "definition": definition, "priority": priority, "apply-to": "queues"})

    def delete_operator_policy(self, vhost: str, name: str) -> None:
        self._request("DELETE", f"/api/operator-policies/{_q(vhost)}/{_q(name)}")

    def put_user(self, name: str, password: str, tags: Iterable[str] = ()) -> None:
        self._request("PUT", f"/api/users/{_q(name)}", {"password": password, "tags": ",".join(tags)})

    def delete_user(self, name: str) -> None:
        self._request("DELETE", f"/api/users/{_q(name)}")

    def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        self._request("PUT", f"/api/permissions/{_q(vhost)}/{_q(user)}",
                      {"configure": configure, "write": write, "read": read})

    def clear_permissions(self, vhost: str, user: str) -> None:
        self._request("DELETE", f"/api/permissions/{_q(vhost)}/{_q(user)}")


class _BodyTooLarge(Exception):
    pass


def _read_body(response: requests.Response, deadline: float) -> bytes:
    """The whole body, or TimeoutError once ``deadline`` passes: one socket read at a time, so a server that
    trickles bytes is cut off at the deadline (plus at most one read timeout), not after the whole body."""
    chunks: list[bytes] = []
    size = 0
    while chunk := response.raw.read1(65536, decode_content=True):
        size += len(chunk)
        if size > MAX_BODY:
            raise _BodyTooLarge
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError
    if time.monotonic() > deadline:
        raise TimeoutError
    return b"".join(chunks)


def _reason(http_reason: str | None, content: bytes) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        return http_reason or "error"
    if isinstance(body, dict):
        return str(body.get("reason") or body.get("error") or http_reason)
    return str(body)

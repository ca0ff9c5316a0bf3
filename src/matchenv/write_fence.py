"""The leader's write fence at the socket: the last check before a write's first byte leaves the process.

A write asks the fence when it starts (:meth:`matchenv.operator.kube.Kube.may_write`); a process stalled after that
(SIGSTOP, a long pause) would still send it when it wakes, after a standby may have taken over. Every connection of
a fenced ``urllib3`` pool manager therefore asks again right before it sends a POST, PUT, PATCH or DELETE, and a
refusal raises :class:`NotLeading` there, before anything is on the wire. Both HTTP clients of the operator (the
Kubernetes client and the management API's ``requests`` session) are ``urllib3`` underneath.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

SendCheck = Callable[[str], None]  # given "METHOD /path"; raises NotLeading to refuse


class NotLeading(Exception):
    """A write was refused: this operator is past its Lease's renew deadline and may no longer be the leader."""


def fence(manager: PoolManager, check: SendCheck) -> None:
    """Every request ``manager`` sends from now on with a write method asks ``check`` first, at the socket."""
    manager.pool_classes_by_scheme = {
        "http": type("FencedHTTPConnectionPool", (HTTPConnectionPool,),
                     {"ConnectionCls": _checked(HTTPConnection, check)}),
        "https": type("FencedHTTPSConnectionPool", (HTTPSConnectionPool,),
                      {"ConnectionCls": _checked(HTTPSConnection, check)}),
    }
    manager.clear()  # pools made before this (and their connections) are not fenced: drop them


def _checked(base: type[HTTPConnection], check: SendCheck) -> type[HTTPConnection]:
    def request(self: HTTPConnection, method: str, url: str, *args: Any, **kwargs: Any) -> None:
        if method.upper() in WRITE_METHODS:
            check(f"{method.upper()} {url.split('?', 1)[0]}")
        base.request(self, method, url, *args, **kwargs)

    return type(f"Fenced{base.__name__}", (base,), {"request": request})

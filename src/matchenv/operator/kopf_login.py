"""kopf's own HTTP session, fenced like the operator's writes.

kopf writes too: finalizers, its progress and diff-base annotations, after each handler. Its ``aiohttp`` session
is built here from the credentials kopf's default login finds (``kopf.login_via_client``), the same way kopf
builds it, plus a trace whose request-start hook asks the leader fence (:mod:`matchenv.write_fence`) before any
POST, PUT, PATCH or DELETE, so that a stalled leader's kopf sends nothing once a standby may lead either.
"""

from __future__ import annotations

import types
from typing import Any

import aiohttp
import kopf

from matchenv.write_fence import WRITE_METHODS, SendCheck


def fenced_session(info: kopf.ConnectionInfo, check_send: SendCheck | None) -> kopf.AiohttpSession:
    """The session kopf would make for ``info``; with ``check_send``, each write asks it as the request starts."""
    traces = [_trace(check_send)] if check_send is not None else []
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        trace_configs=traces,
    )
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server, priority=info.priority,
                               default_namespace=info.default_namespace, expiration=info.expiration)


def _trace(check_send: SendCheck) -> aiohttp.TraceConfig:
    async def on_request_start(session: aiohttp.ClientSession, context: types.SimpleNamespace,
                               params: Any) -> None:
        if params.method.upper() in WRITE_METHODS:
            check_send(f"{params.method.upper()} {params.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace

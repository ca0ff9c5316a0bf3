"""Who may read the operator's metrics when the chart asks for them to be secured (``MATCHENV_METRICS_SECURE``): a
request's bearer token is authenticated by the API server (TokenReview) and must be allowed GET on the non-resource
URL ``/metrics`` (SubjectAccessReview), as Kubernetes' own components check their scrapers. A verdict is kept for a
minute per token (a scrape every few seconds costs two reviews a minute, not two a scrape); a token the API server
cannot judge now is refused with 503 and not kept."""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from matchenv.operator.kube import Kube

log = logging.getLogger("matchenv.operator")
METRICS_PATH = "/metrics"


class Verdict(NamedTuple):
    status: int  # 200, 401 (who?), 403 (not allowed), 503 (cannot tell now)
    why: str


class MetricsAccess:
    """``check(authorization header)``: may this request read the metrics?"""

    def __init__(self, kube: Kube, ttl: float = 60.0, capacity: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self._verdicts: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, authorization: str | None) -> Verdict:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Verdict(401, "a bearer token is needed: scrape with a ServiceAccount's token")
        key = hashlib.sha256(token.strip().encode()).hexdigest()
        now = self.clock()
        with self._lock:
            kept = self._verdicts.get(key)
            if kept is not None and kept[0] > now:
                return kept[1]
        verdict = self._judge(token.strip())
        if verdict.status != 503:
            with self._lock:
                self._verdicts[key] = (now + self.ttl, verdict)
                self._verdicts.move_to_end(key)
                while len(self._verdicts) > self.capacity:
                    self._verdicts.popitem(last=False)
        return verdict

    def _judge(self, token: str) -> Verdict:
        try:
            review = self.kube.review_token(token)
            if not review.get("authenticated"):
                return Verdict(401, "the API server does not know this token")
            user = review.get("user") or {}
            allowed, reason = self.kube.may_get_path(user, METRICS_PATH)
        except (ApiException, HTTPError, OSError) as exc:
            log.warning("cannot check a metrics scraper's token now: %s", exc)
            return Verdict(503, "cannot check the token now")
        if not allowed:
            return Verdict(403, f"{user.get('username')} may not get {METRICS_PATH}"
                           + (f" ({reason})" if reason else "") + ": bind it to a role allowing it")
        return Verdict(200, "ok")


class CertificateMissing(Exception):
    """Secured metrics without their certificate: the message says where it was looked for."""


def tls_context(cert_dir: str) -> ssl.SSLContext:
    """The server's TLS from ``tls.crt`` and ``tls.key`` in ``cert_dir`` (a mounted kubernetes.io/tls Secret: the
    chart's self-signed one, or cert-manager's)."""
    directory = Path(cert_dir or ".")
    missing = [name for name in ("tls.crt", "tls.key") if not (directory / name).is_file()]
    if not cert_dir or missing:
        raise CertificateMissing(f"secured metrics need tls.crt and tls.key in MATCHENV_METRICS_CERT_DIR "
                                 f"({cert_dir or 'not set'}): mount a kubernetes.io/tls Secret there")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    return context

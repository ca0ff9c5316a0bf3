"""Who may read the operator's secured metrics: the API server's TokenReview and SubjectAccessReview decide; a
verdict is kept for a while, a failure to ask is not."""

from __future__ import annotations

from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from matchenv.operator.kube import Kube
from matchenv.operator.metrics_access import MetricsAccess, Verdict

USERS = {"scraper-token": ("system:serviceaccount:monitoring:prometheus", True),
         "other-token": ("system:serviceaccount:default:nobody", False)}


class Reviews:
    """The API server's answers: known tokens, who may get /metrics; or down."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    def review_token(self, token: str) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")
        if token not in USERS:
            return {"authenticated": False}
        return {"authenticated": True, "user": {"username": USERS[token][0], "groups": ["system:serviceaccounts"]}}

    def may_get_path(self, user: dict[str, Any], path: str) -> tuple[bool, str]:
        assert path == "/metrics"
        return next(allowed for name, allowed in USERS.values() if name == user["username"]), ""


def access(reviews: Reviews, now: list[float]) -> MetricsAccess:
    return MetricsAccess(cast(Kube, reviews), ttl=60, capacity=2, clock=lambda: now[0])


def test_only_a_token_allowed_to_get_metrics_reads_them() -> None:
    reviews, now = Reviews(), [0.0]
    check = access(reviews, now).check
    assert check(None).status == 401
    assert check("Basic dXNlcjpwdw==").status == 401
    assert check("Bearer unknown").status == 401
    refused = check("Bearer other-token")
    assert refused.status == 403
    assert "system:serviceaccount:default:nobody may not get /metrics" in refused.why
    assert check("Bearer scraper-token") == Verdict(200, "ok")


def test_a_verdict_is_kept_for_its_time_and_a_failure_to_ask_is_not() -> None:
    reviews, now = Reviews(), [0.0]
    check = access(reviews, now).check
    assert check("Bearer scraper-token").status == 200
    calls = reviews.calls
    assert check("bearer scraper-token").status == 200  # the scheme is case-insensitive
    assert reviews.calls == calls  # kept
    now[0] = 61.0
    reviews.down = True
    assert check("Bearer scraper-token").status == 503  # cannot tell now: no access, nothing kept
    reviews.down = False
    assert check("Bearer scraper-token").status == 200
    assert reviews.calls == calls + 2


def test_the_kept_verdicts_are_bounded() -> None:
    reviews, now = Reviews(), [0.0]
    checker = access(reviews, now)
    for token in ("a", "b", "c", "d"):
        checker.check(f"Bearer {token}")
    assert len(checker._verdicts) == 2

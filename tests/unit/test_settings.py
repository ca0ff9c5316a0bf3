"""Operator settings from the environment and options."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from matchenv.operator.settings import OperatorSettings


def test_environment_and_overrides() -> None:
    s = OperatorSettings.from_env({"MATCHENV_NAMESPACES": "a, b", "MATCHENV_RESYNC_SECONDS": "3",
                                   "POD_NAMESPACE": "ops", "POD_NAME": "op-0"}, resync_seconds=5.0)
    assert s.namespaces == ["a", "b"]
    assert s.resync_seconds == 5.0
    assert s.operator_namespace == "ops"
    assert s.identity == "op-0"
    assert s.broker_secret_ref == ("matchenv-system", "matchenv-broker")


@pytest.mark.parametrize(("var", "value"), [("MATCHENV_BROKER_SECRET", "no-namespace"),
                                            ("MATCHENV_RESYNC_SECONDS", "0"),
                                            ("MATCHENV_METRICS_PORT", "70000"),
                                            ("MATCHENV_ARCHIVE", "sometimes"),
                                            ("MATCHENV_ARCHIVE_MAX_AGE", "30 days"),
                                            ("MATCHENV_ARCHIVE_SEGMENT_BYTES", "10"),
                                            ("MATCHENV_CLUSTER_ID", "prod.eu"),  # dots would make user names
                                            ("MATCHENV_CLUSTER_ID", "Prod")])    # ambiguous
def test_bad_settings_are_refused(var: str, value: str) -> None:
    with pytest.raises(ValidationError):
        OperatorSettings.from_env({var: value})


def test_the_archive_settings() -> None:
    s = OperatorSettings.from_env({})
    assert (s.archive, s.archive_max_age) == ("always", "30D")
    s = OperatorSettings.from_env({"MATCHENV_ARCHIVE": "on-demand", "MATCHENV_ARCHIVE_MAX_AGE": "12h",
                                   "MATCHENV_ARCHIVE_MAX_BYTES": "2000000", "MATCHENV_ARCHIVE_SEGMENT_BYTES": "5000"})
    assert (s.archive, s.archive_max_age, s.archive_max_bytes, s.archive_segment_bytes) == (
        "on-demand", "12h", 2_000_000, 5_000)
    assert s.archive_max_age_seconds == 12 * 3600  # what matchenv_archive_max_age_seconds exports
    assert OperatorSettings.from_env({}).archive_max_age_seconds == 30 * 86400
    assert OperatorSettings.from_env({"MATCHENV_ARCHIVE_MAX_AGE": "1Y"}).archive_max_age_seconds == 365 * 86400
    assert OperatorSettings.from_env({"MATCHENV_ARCHIVE": "off"}).archive_max_age_seconds is None

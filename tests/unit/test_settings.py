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
                                            ("MATCHENV_METRICS_PORT", "70000")])
def test_bad_settings_are_refused(var: str, value: str) -> None:
    with pytest.raises(ValidationError):
        OperatorSettings.from_env({var: value})

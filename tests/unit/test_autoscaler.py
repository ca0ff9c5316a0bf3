"""Backlog-based scaling decisions."""

from __future__ import annotations

from matchenv.api import AutoscalingSpec
from matchenv.operator.autoscaler import Autoscaler, target_replicas

SPEC = AutoscalingSpec.model_validate({"enabled": True, "minReplicas": 1, "maxReplicas": 5,
                                       "messagesPerReplica": 100})


def test_target_follows_the_backlog_within_bounds() -> None:
    assert target_replicas(SPEC, 0) == 1
    assert target_replicas(SPEC, 1) == 1
    assert target_replicas(SPEC, 101) == 2
    assert target_replicas(SPEC, 10_000) == 5


def test_scale_to_zero_only_when_allowed() -> None:
    zero = SPEC.model_copy(update={"min_replicas": 0})
    assert target_replicas(zero, 0) == 0
    assert target_replicas(zero, 1) == 1


def test_up_at_once_down_after_the_stabilization_window() -> None:
    scaler = Autoscaler()  # SPEC: scaleDownStabilizationSeconds defaults to 60
    assert scaler.decide("a", SPEC, backlog=450, current=1, now=0) == 5
    assert scaler.decide("a", SPEC, backlog=0, current=5, now=10) == 5
    assert scaler.decide("a", SPEC, backlog=0, current=5, now=69) == 5
    assert scaler.decide("a", SPEC, backlog=0, current=5, now=70) == 1


def test_a_burst_resets_the_scale_down_clock() -> None:
    scaler = Autoscaler()
    assert scaler.decide("a", SPEC, backlog=0, current=3, now=0) == 3
    assert scaler.decide("a", SPEC, backlog=300, current=3, now=30) == 3
    assert scaler.decide("a", SPEC, backlog=0, current=3, now=80) == 3
    assert scaler.decide("a", SPEC, backlog=0, current=3, now=140) == 1


def test_disabled_keeps_the_replicas_the_user_set() -> None:
    off = SPEC.model_copy(update={"enabled": False})
    assert Autoscaler().decide("a", off, backlog=10_000, current=2, now=0) == 2


def test_each_environment_has_its_own_stabilization_window() -> None:
    quick = SPEC.model_copy(update={"scale_down_stabilization_seconds": 0})
    slow = SPEC.model_copy(update={"scale_down_stabilization_seconds": 300})
    scaler = Autoscaler()
    assert scaler.decide("quick", quick, backlog=0, current=4, now=0) == 1  # at the next check
    assert scaler.decide("slow", slow, backlog=0, current=4, now=0) == 4
    assert scaler.decide("slow", slow, backlog=0, current=4, now=299) == 4
    assert scaler.decide("slow", slow, backlog=0, current=4, now=300) == 1


def test_a_lowered_max_replicas_applies_at_once() -> None:
    lowered = SPEC.model_copy(update={"max_replicas": 2})
    assert Autoscaler().decide("a", lowered, backlog=10_000, current=5, now=0) == 2


def test_a_count_set_by_hand_is_put_back_and_explained() -> None:
    scaler = Autoscaler()
    decision = scaler.review("a", SPEC, backlog=1000, asked=2, recorded=5, now=0)
    assert (decision.replicas, decision.overridden, decision.scaled_from) == (5, 2, None)
    assert "set to 2 by hand" in decision.message
    assert "autoscaling.enabled to false" in decision.message
    # the explanation stays while the count holds, and gives way once the autoscaler moves it
    again = scaler.review("a", SPEC, backlog=1000, asked=5, recorded=5, now=1, last_message=decision.message)
    assert (again.replicas, again.overridden, again.message) == (5, None, decision.message)
    moved = scaler.review("a", SPEC.model_copy(update={"scale_down_stabilization_seconds": 0}), backlog=0, asked=5,
                          recorded=5, now=2, last_message=decision.message)
    assert (moved.replicas, moved.scaled_from) == (1, 5)
    assert moved.message.startswith("scaled 5 -> 1")


def test_the_first_look_takes_the_spec_as_the_current_count() -> None:
    decision = Autoscaler().review("a", SPEC, backlog=0, asked=3, recorded=None, now=0)
    assert (decision.replicas, decision.overridden) == (3, None)
    assert "keeping 3" in decision.message  # the backlog asks for 1: held for the stabilization window

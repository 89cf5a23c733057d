"""Following the leader among several coordinators (actorsched.coordinators), without sockets."""

from __future__ import annotations

import pytest

from actorsched.config import MAX_COORDINATORS
from actorsched.coordinators import RECENTLY_DOWN_S, CoordinatorList

A, B, C = "tcp://10.0.0.1:7700", "tcp://10.0.0.2:7700", "tcp://10.0.0.3:7700"


def test_a_named_leader_is_tried_at_once() -> None:
    coordinators = CoordinatorList([A, B])
    assert coordinators.after_not_leader(B, now=0.0) == B
    assert coordinators.current == B


def test_a_leader_named_after_its_connection_dropped_is_not_gone_back_to() -> None:
    # The leader A is killed: the client leaves it for B, a standby whose lease view still names A.
    coordinators = CoordinatorList([A, B])
    assert coordinators.after_silence(now=100.0) == B
    assert coordinators.after_not_leader(A, now=101.0) == B, "A dropped a second ago: wait for B to take over"
    assert coordinators.after_not_leader("", now=102.0) == B
    # long after, A (restarted) may lead again, and is followed
    assert coordinators.after_not_leader(A, now=100.0 + RECENTLY_DOWN_S + 1) == A


def test_silence_rotates_to_the_next_coordinator_not_seen_down_lately() -> None:
    coordinators = CoordinatorList([A, B, C])
    coordinators.note_down(B, now=50.0)
    assert coordinators.after_silence(now=51.0) == C, "B dropped a second ago; C did not"
    assert coordinators.after_silence(now=52.0) == B, "every one down lately: the one down longest"


def test_a_leader_outside_the_list_is_followed_and_the_list_resumes_after_it() -> None:
    coordinators = CoordinatorList([A, B])
    assert coordinators.after_not_leader(C, now=0.0) == C
    assert coordinators.after_silence(now=1.0) == A


def test_one_endpoint_is_not_several_and_an_empty_list_is_refused() -> None:
    assert not CoordinatorList([A, A]).several
    assert CoordinatorList([A, B]).several
    with pytest.raises(ValueError):
        CoordinatorList([])


def test_a_name_that_is_no_endpoint_is_ignored_and_followed_leaders_are_bounded() -> None:
    coordinators = CoordinatorList([A, B])
    for bad in ("tcp://host-without-port", "not an endpoint", "tcp://10.0.0.9:99999"):
        assert coordinators.after_not_leader(bad, now=0.0) == A
    for port in range(20000, 20100):  # a standby naming ever new leaders cannot grow the list without bound
        coordinators.after_not_leader(f"tcp://10.0.0.9:{port}", now=0.0)
    assert len(coordinators.endpoints) == MAX_COORDINATORS


def test_a_coordinator_left_for_silence_is_not_marked_down_and_is_followed_again_when_named() -> None:
    coordinators = CoordinatorList([A, B])
    assert coordinators.after_silence(now=10.0, dropped=False) == B  # A was only slow
    assert coordinators.after_not_leader(A, now=10.5) == A, "B names A, which did not drop: back to it"


def test_a_leader_followed_from_a_single_endpoint_makes_several() -> None:
    coordinators = CoordinatorList([A])
    assert not coordinators.several
    assert coordinators.after_not_leader(B, now=0.0) == B
    assert coordinators.several  # when B dies, A (perhaps leading again) is tried
    assert coordinators.after_silence(now=1.0) == A

"""Health thresholds: from runs of check results to a decision. Pure logic."""

import pytest

from nmc.health import Thresholds

T = Thresholds(unhealthy_after=2, healthy_after=1, replace_after=15)


@pytest.mark.parametrize("in_rotation, fails, passes, out_for, verdict", [
    (True, 0, 5, 0, None),        # healthy and in: nothing to do
    (True, 1, 0, 0, None),        # one failure is not enough
    (True, 2, 0, 0, "out"),       # two in a row: out of the rotation
    (False, 0, 1, 3, "in"),       # out, and it passed: back in
    (False, 3, 0, 14.9, None),    # out and still failing, within the grace period
    (False, 3, 0, 15, "replace"), # ... past it: replaced
    (False, 0, 0, 99, None),      # out without a failed check (a refused request): wait for one
])
def test_judge(in_rotation, fails, passes, out_for, verdict):
    assert T.judge(in_rotation, fails, passes, out_for) == verdict


def test_stricter_thresholds():
    strict = Thresholds(unhealthy_after=1, healthy_after=3, replace_after=0)
    assert strict.judge(True, 1, 0, 0) == "out"
    assert strict.judge(False, 0, 2, 0) is None and strict.judge(False, 0, 3, 0) == "in"
    assert strict.judge(False, 1, 0, 0) == "replace"

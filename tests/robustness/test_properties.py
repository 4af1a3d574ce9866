"""Property tests: the coreset and the TailSampler math on any finite input; NaN/inf refused."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tailedcore.sampling import greedy_coreset, greedy_coreset_reference
from tailedcore.tail import elbow, estimate_class_sizes, group_sizes, max_k, share_limit, tail_sampler

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@st.composite
def matrices(draw, max_rows=60, max_dims=12):
    rows = draw(st.integers(1, max_rows))
    dims = draw(st.integers(1, max_dims))
    return draw(arrays(np.float32, (rows, dims), elements=finite))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=matrices(), data=st.data())
def test_coreset_valid_and_exact(x, data):
    n = data.draw(st.integers(0, len(x)))
    start = data.draw(st.integers(0, len(x) - 1))
    block_rows = data.draw(st.integers(1, 70))
    picks = greedy_coreset(x, n, start, block_rows)
    assert picks.shape == (n,) and len(set(picks.tolist())) == n
    assert ((picks >= 0) & (picks < len(x))).all()
    if n:
        assert picks[0] == start
    np.testing.assert_array_equal(picks, greedy_coreset_reference(x, n, start))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_refused(bad):
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        greedy_coreset(x, 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        estimate_class_sizes(x)


@settings(max_examples=60, deadline=None)
@given(x=matrices(max_rows=40))
def test_tail_sampler_outputs_are_valid(x):
    sizes = estimate_class_sizes(x)
    assert sizes.shape == (len(x),) and ((sizes >= 1) & (sizes <= len(x))).all()
    groups = group_sizes(sizes)
    assert groups.sum() == len(x) and (groups >= 1).all() and (np.diff(groups) <= 0).all()
    limit = max_k(groups)
    assert limit in groups.tolist()
    tail = tail_sampler(x).tail_indices
    assert len(set(tail.tolist())) == len(tail) and ((tail >= 0) & (tail < len(x))).all()


@given(st.lists(st.integers(1, 500), min_size=1, max_size=30))
def test_group_rules_on_any_sizes(values):
    groups = group_sizes(values)
    assert groups.sum() == len(values)
    assert elbow(groups) in groups.tolist() and share_limit(groups) in groups.tolist()

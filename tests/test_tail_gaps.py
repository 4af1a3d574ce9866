"""benchmarks/tail_gaps.py: a linkage cut chosen per set from the links of its minimum spanning tree."""

import numpy as np
import pytest

from tailedcore.tail import LinkageTailSampler, TailInputs

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def gaps():
    with benchmark_module("tail_gaps") as module:
        yield module


def test_each_rule_cuts_where_the_module_says(gaps):
    links = np.array([0.10, 0.21, 0.22, 0.26, 0.30, 0.45, 0.60])
    assert gaps.choose_cut(links, "fixed:0.3", 0.2, 0.5) == 0.3
    assert gaps.choose_cut(links, "log", 0.2, 0.5) == 0.30  # 0.45 / 0.30, the largest ratio in the window
    assert gaps.choose_cut(links, "lin", 0.2, 0.5) == 0.30  # 0.45 - 0.30, the widest gap
    assert gaps.choose_cut(links, "first:1.1", 0.2, 0.5) == 0.22  # 0.26 / 0.22 = 1.18, the first of 1.1 or more
    assert gaps.choose_cut(links, "first:2", 0.2, 0.5) == 0.5  # none: the window's end
    with pytest.raises(ValueError, match="rule 'widest'"):
        gaps.choose_cut(links, "widest", 0.2, 0.5)


def test_clusters_of_the_tree_at_a_cut_are_single_linkage_clusters(gaps):
    """Cutting the spanning tree gives the clusters of the estimator's own single linkage, at any cut."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    embeddings = np.repeat(centres, [12, 6, 1, 1], axis=0) + 0.2 * rng.standard_normal((20, 16))
    inputs = TailInputs(embeddings.astype(np.float32), (embeddings + rng.standard_normal(16)).astype(np.float32))
    links = gaps.spanning_links(LinkageTailSampler(), inputs)
    assert len(links[0]) == 19
    for cut in (0.05, 0.3, 0.6):
        ours = gaps.clusters_at(20, links, cut)
        linkage = LinkageTailSampler(distance=cut).clusters(inputs)
        assert len(set(zip(ours, linkage))) == len(set(ours)) == len(set(linkage))  # the same partition

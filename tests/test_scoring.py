import numpy as np
import pytest
import torch

from tailedcore.engine import fast_bfloat16
from tailedcore.scoring import ExactSearch, LeftOutScorer, PatchScorer, anomaly_maps, build_search, principal_axes


def brute(memory, queries, k):
    d = ((queries[:, None, :].astype(np.float64) - memory[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("search", ["exact", "flat"])
@pytest.mark.parametrize("k", [1, 3])
def test_exact_searches_match_brute_force(search, k):
    rng = np.random.default_rng(0)
    memory = rng.standard_normal((700, 24)).astype(np.float32)
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    index = build_search(memory, search, **({"memory_block": 64, "query_block": 16} if search == "exact" else {}))
    d, i = index.search(queries, k)
    d_ref, i_ref = brute(memory, queries, k)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_exact_search_without_some_rows_is_the_search_of_the_rest(k):
    rng = np.random.default_rng(2)
    memory = rng.standard_normal((500, 16)).astype(np.float32)
    queries = np.concatenate([memory[:20], rng.standard_normal((30, 16)).astype(np.float32)])
    excluded = np.arange(0, 500, 3)  # every query's own row among them
    rest = np.setdiff1d(np.arange(500), excluded)
    d, i = ExactSearch(memory, memory_block=64, query_block=16).search(queries, k, excluded)
    d_ref, i_ref = brute(memory[rest], queries, k)
    np.testing.assert_array_equal(i, rest[i_ref])
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4)


def test_left_out_scorer_scores_against_the_other_rows_only():
    memory = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    scorer = LeftOutScorer(memory, weights=np.array([1.0, 2.0, 1.0], np.float32))
    patches = np.array([[0.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(scorer.score(patches, np.array([0])), [2.0, 0.0])  # 1^2 x weight 2, then 0
    np.testing.assert_allclose(scorer.score(patches, np.array([0, 2])), [2.0, 8.0])
    with pytest.raises(ValueError, match="too few memory rows"):
        scorer.score(patches, np.array([0, 1, 2]))


def test_approximate_indexes_find_most_neighbours():
    rng = np.random.default_rng(1)
    memory = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = memory[:200] + 0.01 * rng.standard_normal((200, 16)).astype(np.float32)
    for search in ("ivf", "hnsw", "ivf-batched"):
        _, i = build_search(memory, search).search(queries, 1)
        assert (i[:, 0] == np.arange(200)).mean() > 0.9


def test_patch_scorer_weights_and_distance_kind():
    memory = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    patches = np.array([[[1.0, 0.0], [9.0, 0.0]]], dtype=np.float32)  # (1, 2, 2)
    np.testing.assert_allclose(PatchScorer(memory).score(patches), [[1.0, 1.0]])
    np.testing.assert_allclose(PatchScorer(memory, squared=False).score(patches * 2), [[2.0, 8.0]])
    weighted = PatchScorer(memory, weights=np.array([2.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(weighted.score(patches), [[2.0, 0.5]])
    with pytest.raises(ValueError, match="empty"):
        PatchScorer(np.empty((0, 2), np.float32))


def test_anomaly_maps_upsample_and_blur():
    scores = np.zeros((2, 4, 4), dtype=np.float32)
    scores[1, 1, 2] = 1.0
    maps = anomaly_maps(scores, 32, sigma=4)
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    assert maps[0].max() == 0
    peak = np.unravel_index(np.argmax(maps[1]), maps[1].shape)
    assert abs(peak[0] - 12) <= 2 and abs(peak[1] - 20) <= 2  # patch (1, 2) of a 4x4 grid at 32 px
    assert maps[1].max() < 1.0  # blurred


def test_approximate_misses_fall_back_to_exact_search():
    rng = np.random.default_rng(3)
    memory = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((300, 8)).astype(np.float32) * 3
    index = build_search(memory, "ivf", nlist=32, nprobe=1)  # lists of 1-2 rows: 5 neighbours are not there
    _, raw_i = index.index.search(queries, 5)
    assert (raw_i < 0).any()
    _, i = index.search(queries, 5)
    assert (i >= 0).all()
    missed = (raw_i < 0).any(axis=1)
    np.testing.assert_array_equal(i[missed], brute(memory, queries[missed], 5)[1])


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("nprobe", [1, 4])
def test_batched_ivf_finds_what_faiss_ivf_finds(k, nprobe):
    rng = np.random.default_rng(4)
    memory = rng.standard_normal((4000, 32)).astype(np.float32)
    queries = rng.standard_normal((600, 32)).astype(np.float32)
    faiss_d, faiss_i = build_search(memory, "ivf", nprobe=nprobe).search(queries, k)
    d, i = build_search(memory, "ivf-batched", nprobe=nprobe).search(queries, k)
    np.testing.assert_array_equal(i, faiss_i)
    np.testing.assert_allclose(d, faiss_d, rtol=1e-4, atol=1e-4)
    assert (i[:, 0] != brute(memory, queries, 1)[1][:, 0]).any()  # approximate: some neighbours are not probed


def test_nlist_factor_sets_the_number_of_lists_for_both_ivf_searches():
    rng = np.random.default_rng(8)
    memory = rng.standard_normal((10000, 8)).astype(np.float32)  # sqrt(M) = 100; at most M // 39 = 256 lists
    queries = rng.standard_normal((300, 8)).astype(np.float32)
    assert build_search(memory, "ivf-batched").quantizer.ntotal == 256  # 4 sqrt(M), capped by faiss's minimum
    for factor, lists in ((2, 200), (0.5, 50)):
        assert build_search(memory, "ivf", nlist_factor=factor).index.nlist == lists
        assert build_search(memory, "ivf-batched", nlist_factor=factor).quantizer.ntotal == lists
    assert build_search(memory, "ivf-batched", nlist=30, nlist_factor=2).quantizer.ntotal == 30  # nlist wins
    faiss_i = build_search(memory, "ivf", nlist_factor=0.5, nprobe=2).search(queries, 3)[1]
    np.testing.assert_array_equal(build_search(memory, "ivf-batched", nlist_factor=0.5, nprobe=2).search(queries, 3)[1],
                                  faiss_i)
    with pytest.raises(ValueError, match="nlist_factor=0"):
        build_search(memory, "ivf-batched", nlist_factor=0)


def test_batched_ivf_misses_fall_back_to_exact_search():
    rng = np.random.default_rng(3)
    memory = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((300, 8)).astype(np.float32) * 3
    index = build_search(memory, "ivf-batched", nlist=32, nprobe=1)
    d, i = index.search(queries, 5)  # lists of 1-2 rows
    assert (i >= 0).all() and np.isfinite(d).all()
    assert [a.shape for a in index.search(queries[:0], 5)] == [(0, 5), (0, 5)]
    faiss_i = build_search(memory, "ivf", nlist=32, nprobe=1).search(queries, 5)[1]
    np.testing.assert_array_equal(i, faiss_i)


@pytest.mark.parametrize("bfloat16", [True, False])
def test_batched_ivf_ranking_rescores_its_candidates_in_float32(bfloat16):
    """bfloat16 ranking (CPUs with bfloat16 units) or float32 ranking (elsewhere), the same contract."""
    rng = np.random.default_rng(5)
    memory = rng.standard_normal((4000, 64)).astype(np.float32)
    queries = memory[:500] + 0.3 * rng.standard_normal((500, 64)).astype(np.float32)
    float32_d, float32_i = build_search(memory, "ivf-batched", nprobe=4).search(queries, 2)
    index = build_search(memory, "ivf-batched", nprobe=4, rerank=3, bfloat16=bfloat16)
    assert index.ranking == (torch.bfloat16 if bfloat16 else torch.float32)
    d, i = index.search(queries, 2)
    assert (i == float32_i).mean() > (0.97 if bfloat16 else 0.999)  # the same lists, nearly always the same rows
    exact = ((memory[i] - queries[:, None, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(d, exact, rtol=1e-5)  # float32 distances to the rows returned
    assert (d[:, 0] <= d[:, 1]).all()


def test_principal_axes_are_orthonormal_and_span_the_memorys_variance():
    rng = np.random.default_rng(6)
    basis = np.linalg.qr(rng.standard_normal((32, 3)))[0]  # a 3-d subspace of 32 dims
    memory = (rng.standard_normal((2000, 3)) * [5.0, 3.0, 2.0] @ basis.T
              + 0.01 * rng.standard_normal((2000, 32)) + 7.0).astype(np.float32)
    axes = principal_axes(memory, 3, sample=1000)
    assert axes.shape == (32, 3) and axes.dtype == np.float32
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(np.linalg.svd(basis.T @ axes, compute_uv=False), 1.0, atol=1e-3)  # same subspace


def test_batched_ivf_ranking_on_principal_axes_rescores_in_full():
    """Ranked on the memory's leading axes, rescored on all: on memory of low rank, the neighbours of exact
    search, with float32 distances over every dimension."""
    rng = np.random.default_rng(7)
    memory = (rng.standard_normal((4000, 8)) @ rng.standard_normal((8, 64))
              + 0.05 * rng.standard_normal((4000, 64))).astype(np.float32)
    queries = memory[:400] + 0.05 * rng.standard_normal((400, 64)).astype(np.float32)
    index = build_search(memory, "ivf-batched", nprobe=8, rerank=4, ranking_dim=8, bfloat16=False)
    assert index.projection.shape == (64, 8) and index.lists[0].shape[1] == 8
    d, i = index.search(queries, 2)
    full_d, full_i = build_search(memory, "ivf-batched", nprobe=8, rerank=4, bfloat16=False).search(queries, 2)
    assert (i == full_i).mean() > 0.99
    exact = ((memory[i] - queries[:, None, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(d, exact, rtol=1e-5)
    assert build_search(memory, "ivf-batched", nprobe=8, rerank=4, ranking_dim=64).projection is None  # r >= D
    for options in ({"ranking_dim": 8}, {"rerank": 4, "ranking_dim": 0}):
        with pytest.raises(ValueError, match="ranking_dim"):
            build_search(memory, "ivf-batched", **options)


def test_batched_ivf_ranks_in_bfloat16_only_where_the_cpu_multiplies_it():
    memory = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    index = build_search(memory, "ivf-batched", nlist=8, rerank=2)
    assert index.ranking == (torch.bfloat16 if fast_bfloat16() else torch.float32)
    with pytest.raises(ValueError, match="rerank=1: must be at least k=2"):
        build_search(memory, "ivf-batched", nlist=8, rerank=1).search(memory, 2)

"""Search in each product's own memory (routing.py) on a small real set of three products."""

import numpy as np
import pytest

from tailedcore import PatchCore, load, routing
from tailedcore.routing import RoutedScorer
from tailedcore.scoring import PatchScorer

from .conftest import real_subset

TRAIN = {"bottle": 10, "pcb": 6, "screw": 1}
PARAMS = {"resize": 72, "crop": 64, "progress": False, "batch_size": 8, "calibration_share": 0.0}


@pytest.fixture(scope="module")
def fitted():
    train, test = real_subset(TRAIN, 1)
    return PatchCore(**PARAMS).fit(train), train, test


def routed(detector, **options) -> RoutedScorer:
    memory = detector.memory_.features
    return RoutedScorer(memory, None, detector.products_, lambda: PatchScorer(memory), **options)


def test_each_image_is_routed_to_its_product_and_small_products_borrow_the_nearest(fitted):
    detector, _, _ = fitted
    products = detector.products_
    rows = np.bincount(products.memory_products)
    scorer = routed(detector, min_rows=0, unknown_factor=2.5)
    assert [route[0] for route in scorer.routes(products.mean_patches)] == products.labels.tolist()
    # With min_rows above a product's rows, its images also search the nearest other product.
    small = routed(detector, min_rows=int(rows[2]) + 1, unknown_factor=2.5)
    screw = products.mean_patches[products.labels == 2]
    route = small.routes(screw)[0]
    assert route[0] == 2 and len(route) == 2
    # A route is its product's, whatever the image: the images of one product share one memory.
    other = products.mean_patches[products.labels == 1]
    assert set(small.routes(np.concatenate([screw, other, 0.9 * screw + 0.1 * other[:1]]))) == {route, (1,)}
    assert small.product_routes[2] == route
    # An unknown product searches the whole memory.
    far = -products.mean_patches[:1]
    assert routed(detector, unknown_factor=2.5).routes(far) == [()]


def test_routed_exact_scores_are_the_exact_scores_within_the_products_rows(fitted):
    detector, _, test = fitted
    features = detector.extractor
    patches = np.concatenate([batch.patches for _, batch in features.iter_batches(test)])
    scorer = routed(detector, min_rows=0, unknown_factor=None)
    routes = scorer.routes(patches.mean(axis=1))
    scores = scorer.score(patches)
    memory, owner = detector.memory_.features, detector.products_.memory_products
    for image, route in enumerate(routes):
        rows = np.flatnonzero(np.isin(owner, route))
        np.testing.assert_allclose(scores[image], PatchScorer(memory[rows]).score(patches[image]), rtol=1e-5)
    # A subset of the memory is never nearer than the whole memory.
    assert (scores >= PatchScorer(memory).score(patches) * (1 - 1e-5)).all()


def test_detector_searches_by_product_when_asked_and_keeps_the_scope_in_its_file(fitted, tmp_path):
    detector, _, test = fitted
    whole = detector.predict(test)
    detector.set_params(search_scope="product")
    try:
        by_product = detector.predict(test)
        detector.save(tmp_path / "model.safetensors")
    finally:
        detector.set_params(search_scope="global")
    assert (by_product.image_scores >= whole.image_scores * (1 - 1e-5)).all()
    np.testing.assert_array_equal(by_product.products, whole.products)
    loaded = load(tmp_path / "model.safetensors")
    assert loaded.search_scope == "product"
    np.testing.assert_allclose(loaded.predict(test).image_scores, by_product.image_scores, rtol=1e-5)


def test_product_scope_needs_products(fitted):
    detector, _, test = fitted
    old = PatchCore(**PARAMS, search_scope="product")
    old.memory_, old.products_ = detector.memory_, None
    with pytest.raises(ValueError, match="search_scope='product': the model has no products"):
        old.predict(test)


def test_build_makes_every_index_the_whole_memorys_included(fitted):
    detector, _, _ = fitted
    made = []

    def whole():
        made.append(True)
        return PatchScorer(detector.memory_.features)

    scorer = RoutedScorer(detector.memory_.features, None, detector.products_, whole)
    scorer.build()
    assert made == [True] and sorted(scorer._indexes) == [0, 1, 2]
    far = -detector.products_.mean_patches[:1]
    scorer.unknown_factor = 2.5
    scorer.score(np.repeat(far[:, None, :], 4, axis=1))  # an unknown product: the whole memory, already built
    assert made == [True]


def test_small_products_are_searched_exactly_whatever_the_search(fitted):
    detector, _, _ = fitted
    memory = detector.memory_.features
    scorer = RoutedScorer(memory, None, detector.products_, lambda: PatchScorer(memory), search="ivf", nprobe=1)
    scorer.build()
    rows = np.bincount(detector.products_.memory_products)
    for product, index in scorer._indexes.items():
        assert (type(index).__name__ == "ExactSearch") == (rows[product] < routing.EXACT_BELOW_ROWS)


def test_a_batch_searches_each_product_once_however_many_routes_share_it(fitted):
    detector, _, test = fitted
    patches = np.concatenate([batch.patches for _, batch in detector.extractor.iter_batches(test)])
    rows = np.bincount(detector.products_.memory_products)
    scorer = routed(detector, min_rows=int(rows[2]) + 1, unknown_factor=None)
    routes = scorer.routes(patches.mean(axis=1))
    shared = {p for route in routes for p in route if sum(p in r for r in set(routes)) > 1}
    assert shared, "the test wants two routes sharing a product"
    expected = scorer.score(patches)
    calls = []
    for product in range(len(detector.products_)):
        index = scorer._index(product)
        index.search = lambda queries, k, _search=index.search, _p=product: calls.append(_p) or _search(queries, k)
    np.testing.assert_array_equal(scorer.score(patches), expected)
    assert sorted(calls) == sorted({p for route in routes for p in route})

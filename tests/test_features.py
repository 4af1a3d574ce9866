import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailedcore.backbones import BackboneError, build_backbone
from tailedcore.features import PatchAggregator, pooling_matrix


def naive_patch_feature(map8, map16, y, x, layer_dim, feature_dim):
    """One location's feature, step by step as PatchCore describes it."""
    vectors = []
    for layer in (map8, map16):
        padded = F.pad(layer, (1, 1, 1, 1))
        neighbourhoods = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # (B, C, h, w, 3, 3)
        grid = neighbourhoods.reshape(*neighbourhoods.shape[:4], 9).permute(0, 1, 4, 2, 3)
        grid = grid.reshape(grid.shape[0], -1, *grid.shape[3:])  # (B, C*9, h, w), channel-major
        if grid.shape[2:] != map8.shape[2:]:
            grid = F.interpolate(grid, size=map8.shape[2:], mode="bilinear", align_corners=False)
        v = grid[0, :, y, x]
        vectors.append(F.adaptive_avg_pool1d(v[None, None], layer_dim)[0, 0])
    return F.adaptive_avg_pool1d(torch.cat(vectors)[None, None], feature_dim)[0, 0]


@pytest.mark.parametrize("layer_dim,feature_dim", [(32, 16), (40, 40), (24, 30)])
def test_aggregation_matches_definition(layer_dim, feature_dim):
    torch.manual_seed(0)
    map8, map16 = torch.randn(2, 5, 6, 6), torch.randn(2, 7, 3, 3)
    features = PatchAggregator((5, 7), 3, layer_dim, feature_dim)(map8, map16)
    assert features.shape == (2, 36, feature_dim)
    for y, x in [(0, 0), (2, 3), (5, 5), (0, 5)]:
        expected = naive_patch_feature(map8[1:], map16[1:], y, x, layer_dim, feature_dim)
        torch.testing.assert_close(features[1, y * 6 + x], expected, rtol=1e-5, atol=1e-5)


def test_pooling_matrix_is_adaptive_average_pooling():
    x = torch.randn(3, 10, dtype=torch.float64)
    for out in (4, 10, 25):
        expected = F.adaptive_avg_pool1d(x[:, None], out)[:, 0]
        torch.testing.assert_close(x @ pooling_matrix(10, out).T, expected)


@pytest.mark.parametrize("name,channels", [("efficientnet-lite0", (40, 112)), ("efficientnet-lite1", (40, 112)),
                                           ("efficientnet-lite2", (48, 120))])
def test_lite_backbones(name, channels):
    backbone = build_backbone(name, image_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        (map8, map16), embedding = backbone.embed(x)
        only8, only16 = backbone(x)
    assert map8.shape == (2, channels[0], 8, 8) and map16.shape == (2, channels[1], 4, 4)
    assert embedding.shape == (2, 1280)
    torch.testing.assert_close(only8, map8)
    torch.testing.assert_close(only16, map16)


def test_stages_choose_the_maps_and_keep_the_stride_8_grid():
    x = torch.randn(2, 3, 64, 64)
    pair = build_backbone("efficientnet-lite0", image_size=64)
    three = build_backbone("efficientnet-lite0", image_size=64, stages=(4, 8, 16, 32))
    with torch.inference_mode():
        map8, map16 = pair(x)
        map4, same8, same16, map32 = three(x)
    assert map4.shape[2:] == (16, 16) and map32.shape[2:] == (2, 2)
    torch.testing.assert_close(same8, map8)  # a stage is the same map whichever others are taken
    torch.testing.assert_close(same16, map16)
    with pytest.raises(BackboneError, match="stages"):
        build_backbone("efficientnet-lite0", image_size=64, stages=(16, 8))
    with pytest.raises(BackboneError, match="stages"):
        build_backbone("efficientnet-lite0", image_size=64, stages=(2, 8))
    from tailedcore import PatchCore

    images = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    for stages in [(8, 16), (4, 8), (16, 32), (8, 16, 32)]:
        extractor = PatchCore(resize=64, crop=64, stages=stages, progress=False).extractor
        batch = extractor.features(extractor.standardise(images), with_embeddings=True)
        assert batch.patches.shape == (2, 64, 1024) and batch.embeddings.shape == (2, 1280)
        assert extractor.settings()["stages"] == list(stages)
    with pytest.raises(ValueError, match="stages"):
        PatchCore(stages=(8, 8)).check_params()


def test_a_finer_stage_is_average_pooled_to_the_grid():
    torch.manual_seed(0)
    map4, map8 = torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4)
    features = PatchAggregator((3, 5), 1, 4, 4, grid=(4, 4))(map4, map8)
    pooled = F.avg_pool2d(map4, 2)  # 1 x 1 neighbourhoods: pooling the map is pooling its features
    only_fine = PatchAggregator((3, 5), 1, 4, 4, grid=(4, 4))(pooled, torch.zeros_like(map8))
    direct = PatchAggregator((3, 5), 1, 4, 4, grid=(4, 4))(torch.zeros_like(map4), map8)
    torch.testing.assert_close(features, only_fine + direct)


def test_lite0_weights_are_pretrained():
    backbone = build_backbone("efficientnet-lite0", image_size=224)
    stats = backbone.net._bn0.running_var
    assert not torch.allclose(stats, torch.ones_like(stats))  # ImageNet statistics, not a fresh init


def test_backbone_errors(tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("resnet9000")
    with pytest.raises(BackboneError, match="weights file"):
        build_backbone("wide_resnet50_2")
    with pytest.raises(BackboneError, match="not found"):
        build_backbone("efficientnet-lite0", weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="bad.pth"):
        build_backbone("efficientnet-lite0", weights=str(bad))


def test_cache_settings_name_the_backbone_variant():
    from tailedcore import PatchCore

    lite0 = PatchCore(backbone="efficientnet-lite0", resize=64, crop=64, progress=False).extractor
    lite1 = PatchCore(backbone="efficientnet-lite1", resize=64, crop=64, progress=False).extractor
    assert lite0.settings() != lite1.settings()  # same class, same dimensions: only the name tells them apart


def test_bfloat16_precision_is_close_and_float32_out():
    from tailedcore import PatchCore

    images = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    exact = PatchCore(resize=64, crop=64, progress=False).extractor
    fast = PatchCore(resize=64, crop=64, progress=False, precision="bfloat16").extractor
    a = exact.features(exact.standardise(images), with_embeddings=True)
    b = fast.features(fast.standardise(images), with_embeddings=True)
    assert b.patches.dtype == np.float32 and b.embeddings.dtype == np.float32
    assert np.linalg.norm(a.patches - b.patches) / np.linalg.norm(a.patches) < 0.05
    with pytest.raises(ValueError, match="precision"):
        _ = PatchCore(resize=64, crop=64, precision="int8").extractor


@pytest.mark.parametrize("hardware", [True, False])
def test_bfloat16_precision_warns_where_the_cpu_emulates_it(monkeypatch, caplog, hardware):
    import logging

    from tailedcore import PatchCore

    monkeypatch.setattr("tailedcore.features.fast_bfloat16", lambda: hardware)
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        _ = PatchCore(resize=64, crop=64, progress=False, precision="bfloat16").extractor
        _ = PatchCore(resize=64, crop=64, progress=False).extractor
    warned = [r for r in caplog.records if "bfloat16 features are emulated" in r.getMessage()]
    assert len(warned) == (0 if hardware else 1)


def test_a_cached_rerun_reads_one_entry_at_a_time(synthetic_root, tmp_path):
    """Cached batches are read as they are used, not all before the first (a large folder's cache does not fit
    in memory), and a damaged entry is recomputed."""
    from tailedcore import PatchCore
    from tailedcore.store import FeatureCache

    class CountingCache(FeatureCache):
        loads = 0

        def load(self, key):
            CountingCache.loads += 1
            return super().load(key)

    paths = sorted((synthetic_root / "stripes" / "train" / "good").glob("*.png"))[:10]
    extractor = PatchCore(resize=80, crop=64, batch_size=2, progress=False).extractor
    cache = CountingCache(tmp_path / "cache")
    first = [batch.patches for _, batch in extractor.iter_batches(paths, cache=cache)]
    next(iter(sorted(cache.folder.glob("*.npz")))).write_bytes(b"damaged")
    CountingCache.loads = 0
    loads_at_each_batch = []
    again = []
    for _, batch in extractor.iter_batches(paths, cache=cache):
        loads_at_each_batch.append(CountingCache.loads)
        again.append(batch.patches)
    assert loads_at_each_batch == [1, 2, 3, 4, 5]
    for a, b in zip(first, again):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

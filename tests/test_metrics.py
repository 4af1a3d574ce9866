import numpy as np

from tailedcore.metrics import aupro, evaluate_scores, f1_max, image_auroc, mean_metrics, pixel_auroc


def test_image_metrics_hand_checked():
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    # Threshold 0.35: precision 2/3, recall 1 -> F1 0.8; threshold 0.8: P 1, R 0.5 -> 0.667.
    assert abs(f1_max(labels, np.array([0.1, 0.4, 0.35, 0.8])) - 0.8) < 1e-9
    assert image_auroc(np.zeros(3), np.arange(3)) is None
    assert f1_max(np.zeros(3), np.arange(3)) is None


def test_pixel_metrics_perfect_and_inverted():
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 10:12, 3:15] = True
    perfect = masks.astype(np.float32)
    assert pixel_auroc(masks, perfect) == 1.0
    assert abs(aupro(masks, perfect) - 1.0) < 1e-9
    assert aupro(masks, 1.0 - perfect) == 0.0
    assert pixel_auroc(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4))) is None


def test_aupro_weights_regions_equally():
    # Two regions: a big one fully found, a small one missed. Pixel-wise recall would be ~0.94 at
    # FPR 0; per-region overlap is 0.5. The curve is (0, 0) -> (0, 0.5) -> (1, 1) (all zeros tie),
    # so up to FPR 0.3 the area is 0.3 * (0.5 + 0.65) / 2, normalised by 0.3: 0.575.
    masks = np.zeros((1, 20, 20), dtype=bool)
    masks[0, 0:8, 0:8] = True  # 64 px
    masks[0, 15:17, 15:17] = True  # 4 px
    scores = np.zeros((1, 20, 20), dtype=np.float32)
    scores[0, 0:8, 0:8] = 1.0
    assert abs(aupro(masks, scores) - 0.575) < 1e-6


def test_class_results_and_means():
    result = evaluate_scores(np.array([0, 1]), np.array([0.2, 0.9]))
    assert result.values["image_auroc"] == 1.0 and result.values["pixel_auroc"] is None
    assert any("no pixel masks" in note for note in result.notes)
    means = mean_metrics({"a": {"image_auroc": 1.0, "pixel_auroc": None, "aupro": None, "image_f1_max": 1.0},
                          "b": {"image_auroc": 0.5, "pixel_auroc": 0.8, "aupro": 0.6, "image_f1_max": 0.5}})
    assert means == {"image_auroc": 0.75, "pixel_auroc": 0.8, "aupro": 0.6, "image_f1_max": 0.75}


def test_a_numpy_float_metric_prints_as_a_percentage_in_markdown_and_html():
    from tailedcore._io import markdown_table
    from tailedcore.report.html import table

    rows = [["bottle", np.float32(0.875), 0.5, float("nan"), np.float32("nan"), "<b>"]]
    assert markdown_table(["class", "a", "b", "c", "d", "e"], rows).splitlines()[-1] == \
        "| bottle | 87.5 | 50.0 | n/a | n/a | <b> |"
    html = table(["class", "a", "b", "c", "d", "e"], rows)
    assert html.count(">87.5<") == 1 and html.count(">n/a<") == 2 and "&lt;b&gt;" in html

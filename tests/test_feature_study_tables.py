"""scripts/features_table.py: the feature study's tables, from rows of benchmarks/features_study.py."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "features_table.py"


def _tables():
    spec = importlib.util.spec_from_file_location("features_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tables


def row(setting, name, image, pixel=None, aupro=None):
    return {"setting": setting, "class": name, "image_auroc": image, "pixel_auroc": pixel, "aupro": aupro,
            "fit_seconds_per_image": 0.5, "test_seconds_per_image": 0.25, "peak_rss_mib": 1000.0}


def test_means_and_the_paired_comparison_use_the_classes_a_setting_finished():
    study = {"classes": ["a", "b", "c"], "rows": [
        row("base", "a", 0.80, 0.90, 0.60), row("base", "b", 0.90), row("base", "c", 1.00),
        row("new", "a", 0.86, 0.92, 0.70), row("new", "b", 0.90),
    ]}
    text = _tables()(study)
    assert "| base | 80.0 | 90.0 | 100.0 | 90.0 | 3 of 3 | +0.0 |" in text
    # new: mean of its two classes 88.0; against base on the same two classes (80, 90): +3.0 points
    assert "| new | 86.0 | 90.0 | n/a | 88.0 | 2 of 3 | +3.0 |" in text
    assert "| new | 92.0 / 70.0 |" in text  # per-class pixel AUROC / AUPRO where masks exist

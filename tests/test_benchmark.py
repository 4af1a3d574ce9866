"""A tiny benchmark run: structure of the report and metric ranges (not the numbers)."""

import json

import pytest

from tailedcore.app.cli import main
from tailedcore.bench.benchmark import run_seeds
from tailedcore.bench.synthetic import make_dataset
from tailedcore.metrics import METRIC_NAMES
from tailedcore.tail import PaperTailSampler


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    counts = {"stripes": 22, "checker": 21, "dots": 6, "grain": 6, "weave": 5}
    return make_dataset(tmp_path_factory.mktemp("bench-src"), counts, test_good=2, test_defect=6, size=64, seed=2)


def check_numbers(block):
    for values in block.values():
        for value in values.values():
            assert value is None or 0.0 <= value <= 1.0


def test_tiny_benchmark_report(source, tmp_path):
    out = tmp_path / "bench"
    options = {"resize": 64, "crop": 48, "batch_size": 8}
    summary = run_seeds(source, out, ["patchcore", "softpatch", "tailedcore"], "step-k1", 0.1, [0],
                        options=options, progress=False)
    results = json.loads((out / "seed-0" / "results.json").read_text())
    assert results["dataset"]["profile"] == "step-k1" and results["dataset"]["protocol"] == "clean"
    assert set(results["methods"]) == {"patchcore", "softpatch", "tailedcore"}
    assert results["environment"]["torch_threads"] >= 1 and results["environment"]["tailedcore"]
    for block in results["methods"].values():
        assert set(block["classes"]) == set(results["dataset"]["classes"])
        assert set(block["mean"]) == {"all", "head", "tail"}
        check_numbers(block["classes"])
        check_numbers(block["mean"])
        assert all(set(v) == set(METRIC_NAMES) for v in block["classes"].values())
    diagnostics = results["methods"]["tailedcore"]["diagnostics"]
    for key in ("tail_recall", "tail_precision", "injected_in_tail", "class_sizes", "lof_dropped_share_injected",
                "lof_dropped_share_clean", "max_k"):
        assert key in diagnostics
    assert diagnostics["true_tail_images"] == 3  # round(0.6 * 5) tail classes keep one image each
    for name in ("results.csv", "results.md", "report.html"):
        assert (out / "seed-0" / name).is_file()
    html = (out / "seed-0" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "http" not in html.split("<body>")[1]
    assert summary["methods"]["tailedcore"]["mean"]["all"]["image_auroc"]["n"] == 1
    assert (out / "summary.md").read_text().startswith("Profile step-k1")


def test_cli_benchmark_usage(source, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(source), "--out", str(tmp_path / "b"), "--seeds", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(source), "--out", str(tmp_path / "b"), "--resume"])
    assert info.value.code == 2


def test_resume_reuses_finished_seeds(source, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    options = {"resize": 64, "crop": 48, "batch_size": 8}
    run_seeds(source, out, ["patchcore"], "step-k1", 0.1, [0], options=options, progress=False)
    finished = (out / "seed-0" / "results.json").read_text()

    ran = []
    import tailedcore.bench.benchmark as benchmark

    real = benchmark.run_benchmark
    monkeypatch.setattr(benchmark, "run_benchmark", lambda data, folder, *a, **k: ran.append(folder) or real(
        data, folder, *a, **k))
    summary = run_seeds(source, out, ["patchcore"], "step-k1", 0.1, [0, 1], options=options, progress=False,
                        resume=True)
    assert ran == [out / "seed-1"]
    assert (out / "seed-0" / "results.json").read_text() == finished
    assert summary["seeds"] == [0, 1]
    assert summary["methods"]["patchcore"]["mean"]["all"]["image_auroc"]["n"] == 2

    ran.clear()
    run_seeds(source, out, ["patchcore", "softpatch"], "step-k1", 0.1, [0], options=options, progress=False,
              resume=True)
    assert ran == [out / "seed-0"]  # a finished seed without every requested method is run again

    with pytest.raises(ValueError, match=r"seed-0/results.json: built with other settings: profile 'step-k1'"):
        run_seeds(source, out, ["patchcore"], "step-k4", 0.1, [0], options=options, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"seed-0/data/nlt.json: built with other settings: noise 0.1 \(asked 0.2\)"):
        run_seeds(source, out, ["patchcore"], "step-k1", 0.2, [0], options=options, progress=False)


def test_summary_says_when_fewer_seeds_count():
    from tailedcore.bench.benchmark import summarise_seeds
    from tailedcore.report.benchmark_pages import summary_markdown

    def result(pixel):
        mean = {group: {metric: 0.5 for metric in METRIC_NAMES} for group in ("all", "head", "tail")}
        mean["head"]["pixel_auroc"] = pixel
        return {"methods": {"patchcore": {"mean": mean}}}

    summary = summarise_seeds({0: result(0.8), 1: result(None), 2: result(None)})
    assert summary["methods"]["patchcore"]["mean"]["head"]["pixel_auroc"] == {"mean": 0.8, "std": 0.0, "n": 1}
    row = summary_markdown(summary, "step-k1").splitlines()[-1]
    assert "80.0 (1 of 3 seeds)" in row and "50.0 ± 0.0 |" in row


def test_cli_method_options_go_to_the_methods_that_take_them(source, tmp_path, monkeypatch):
    import tailedcore.bench.benchmark as benchmark
    import tailedcore.report.benchmark_pages as benchmark_pages

    calls = []
    monkeypatch.setattr(benchmark, "run_seeds", lambda *args, **kwargs: calls.append(args) or {"seeds": [0],
                                                                                              "methods": {}})
    monkeypatch.setattr(benchmark_pages, "summary_markdown", lambda *args: "")
    assert main(["--quiet", "benchmark", str(source), "--out", str(tmp_path / "b"), "--profile", "step-k1",
                 "--seeds", "0", "--methods", "patchcore", "softpatch", "tailedcore", "--lof-k", "3",
                 "--tail-coreset", "per-image", "--max-tail-rows", "1000"]) == 0
    method_options = calls[0][10]
    assert method_options == {"patchcore": {}, "softpatch": {"policy__lof__k": 3},
                              "tailedcore": {"policy__lof__k": 3, "policy__tail_coreset__scope": "per-image",
                                             "policy__tail_coreset__max_rows": 1000}}
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(source), "--out", str(tmp_path / "b"), "--profile", "step-k1", "--seeds", "0",
              "--methods", "patchcore", "--tail-coreset", "per-image"])
    assert info.value.code == 2


def test_cli_threads_are_used_and_recorded(source, tmp_path):
    import faiss
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "b"
    try:
        assert main(["--quiet", "--threads", "1", "benchmark", str(source), "--out", str(out), "--methods",
                     "patchcore", "--resize", "64", "--crop", "48"]) == 0
        assert faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(before)
    assert json.loads((out / "results.json").read_text())["environment"]["torch_threads"] == 1
    with pytest.raises(SystemExit) as info:
        main(["--threads", "0", "benchmark", str(source), "--out", str(out)])
    assert info.value.code == 2


def test_tailedcore_over_its_tail_limit_runs_two_round_and_counts_only_the_images_it_trained_on(tmp_path):
    from tailedcore.bench.benchmark import run_benchmark

    root = make_dataset(tmp_path / "data", {"stripes": 10, "dots": 3}, test_good=2, test_defect=2, size=64, seed=5)
    (root / "stripes" / "train" / "good" / "000.png").write_bytes(b"not a picture")
    results = run_benchmark(root, tmp_path / "out", ["tailedcore"], options={"resize": 64, "crop": 48},
                            progress=False, method_options={"tailedcore": {"policy__tail_coreset__max_rows": 1,
                                                                           "policy__tail": PaperTailSampler()}})
    entry = results["methods"]["tailedcore"]
    assert entry["diagnostics"]["memory_size"] > 0 and entry["mean"]["all"]["image_auroc"] is not None
    sizes = entry["diagnostics"]["class_sizes"]
    assert {name: item["true"] for name, item in sizes.items()} == {"stripes": 9, "dots": 3}


def test_a_damaged_json_file_of_a_run_is_named_in_the_error(tmp_path):
    from tailedcore.bench.benchmark import _finished, dataset_info

    (tmp_path / "nlt.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"nlt.json: not valid JSON"):
        dataset_info(tmp_path)
    (tmp_path / "results.json").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"results.json: not valid JSON"):
        _finished(tmp_path / "results.json", ["patchcore"])

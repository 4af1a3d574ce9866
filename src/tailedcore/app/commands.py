"""The commands of the command line (cli.py builds the parser): one function per command, each taking
the parsed arguments. Errors are exceptions; UsageError is a combination of options that does not make sense.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .._io import atomic_write_text, check_writable_file, check_writable_folder, markdown_table, staged_directory
from ..data import collect_images
from ..evaluation import calibrate_on_validation, evaluate
from ..methods import METHODS, load
from ..report.writers import stage_table, write_evaluation, write_predictions
from ..scoring import SERVING_SEARCH
from ..thresholds import describe_search, search_mismatch
from .options import SETTING_OPTIONS, given, policy_params

log = logging.getLogger("tailedcore")


def detector_params(args: argparse.Namespace) -> tuple[dict, dict]:
    """(settings parameters, nested policy parameters) of ``fit``, as nested names (``features__crop``)."""
    params = {**given(args, SETTING_OPTIONS), "run__progress": not args.quiet}
    if "search__kind" not in params:  # the model keeps the serving search: every command then gives the same answer
        params["search__kind"] = SERVING_SEARCH["search"]
        params.setdefault("search__options", SERVING_SEARCH["search_options"])
    policy, refused = policy_params(args, args.method)
    for flag, reason in refused.items():
        raise UsageError(f"{flag} does not apply to --method {args.method} ({reason})")
    return params, policy


def _benchmark_method_options(args: argparse.Namespace) -> dict[str, dict]:
    """Per-method nested policy parameters of a benchmark: each given option goes to the methods it applies to."""
    per_method, refused_by = {}, {}
    for method in args.methods:
        per_method[method], refused = policy_params(args, method)
        for option in refused:
            refused_by.setdefault(option, set()).add(method)
    for option, methods in refused_by.items():
        if methods == set(args.methods):
            raise UsageError(f"{option} does not apply to --methods {' '.join(args.methods)}")
    return per_method


class UsageError(ValueError):
    """A combination of options that does not make sense."""


def cmd_fit(args: argparse.Namespace) -> None:
    params, policy = detector_params(args)
    if args.calibration and params.get("calibration__share"):
        raise UsageError("--calibration and --calibration-share both set the thresholds: give one")
    check_writable_file(Path(args.out), args.overwrite)
    if args.calibration:  # with a calibration folder, train on every image
        params.setdefault("calibration__share", 0.0)
    detector = METHODS[args.method]().set_params(**params).set_params(**policy)
    detector.fit(args.data, cache_dir=args.cache, strict=args.strict)
    if args.calibration:
        detector.calibrate(args.calibration)
    elif detector.thresholds_ is None:
        log.warning("no thresholds: %s", _no_thresholds_reason(detector))
    detector.save(args.out)
    print(f"{args.method}: {len(detector.memory_)} memory features from {len(detector.training_paths_)} "
          f"training images -> {args.out}")
    print("\n".join(f"  {line}" for line in fit_summary(detector, Path(args.out))))
    if args.stage_times:
        print(stage_table(detector.stage_times_.table()))


def _no_thresholds_reason(detector) -> str:
    if detector.calibration_share <= 0:
        return "--calibration-share 0 and no --calibration"
    return (f"no product of {detector.calibration_min_class} or more training images to set images aside from; "
            "use --calibration DIR")


def fit_summary(detector, model_file: Path) -> list[str]:
    """What a fit did: images used and skipped, the tail (TailedCore), memory rows, thresholds, file size."""
    info = detector.memory_.info
    lines = [f"images: {len(detector.training_paths_)} used, {len(detector.skipped_)} skipped (unreadable), "
             f"{len(detector.calibration_paths_)} set aside for thresholds"]
    products = detector.products_
    if products is not None:
        lines.append(f"products: {len(products)} found, {int(products.tail.sum())} of them tail "
                     f"({int(products.sizes[products.tail].sum())} images; tailedcore products MODEL lists them)")
        tail = products.tail_paths()
        if tail:
            lines.append("tail images: " + ", ".join(Path(p).name for p in tail[:8]) + (
                f" and {len(tail) - 8} more" if len(tail) > 8 else ""))
    if "tail_images" in info:
        lines.append(f"tail: {info['tail_images']} images found, max K {info['max_k']}")
    rows = f"memory: {len(detector.memory_)} rows"
    if "denoised_memory" in info and "tail_images" in info:
        rows += (f" ({info.get('tail_memory', 0)} from the tail and its views, {info['denoised_memory']} from the "
                 "LOF-denoised images)")
    lines.append(rows)
    thresholds = detector.thresholds_
    if thresholds is None:
        lines.append(f"thresholds: not set ({_no_thresholds_reason(detector)})")
    else:
        few = f"; a rough guess: at least {thresholds.images_needed} images needed" if thresholds.few_images else ""
        lines.append(f"thresholds: image {thresholds.image:.4g}, pixel {thresholds.pixel:.4g} "
                     f"({thresholds.source}{few})")
        lines += product_threshold_lines(detector)
    lines.append(f"search: {describe_search(detector.search_setting)}, kept in the model for every command "
                 "(--search exact: the reference)")
    lines.append(f"model file: {model_file} ({model_file.stat().st_size / 2**20:.1f} MiB)")
    return lines


def product_threshold_lines(detector) -> list[str]:
    """Which products have their own thresholds and which use the global ones (nothing without products)."""
    products = detector.products_
    if products is None or detector.thresholds_ is None:
        return []
    own = sorted(detector.product_thresholds_)
    if detector.calibration_scope == "global":
        return ["product thresholds: none (calibration scope global): every product uses the global ones"]
    listed = ", ".join(f"{p} (image {detector.product_thresholds_[p].image:.4g} on "
                       f"{detector.product_thresholds_[p].images} images)" for p in own)
    others = len(products) - len(own)
    return [f"product thresholds: own for {len(own)} of {len(products)} products"
            + (f": {listed}" if own else "")
            + (f"; {others} use the global ones (too few images to calibrate their own on)" if others else "")]


SERVING_MAX_BATCH = 8


def _load(args: argparse.Namespace):
    return load(args.model, **{"progress": not args.quiet, **given(args, SETTING_OPTIONS)})


# The file that marks an output folder of each kind: --overwrite replaces only such a folder.
OUTPUT_MARKERS = {"predictions": "scores.csv", "evaluation": "metrics.json"}


def check_output_folder(out: Path, overwrite: bool, kind: str = "predictions") -> None:
    """Before any work: refuse an output folder that cannot be written, or that is not empty unless
    ``overwrite`` and it holds a previous output of the same ``kind`` (predictions or evaluation)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: not a folder")
    check_writable_folder(out.parent, out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = OUTPUT_MARKERS[kind]
    if not overwrite:
        raise ValueError(f"{out}: not empty (use --overwrite to replace a previous run's {kind})")
    if not (out / marker).is_file():
        raise ValueError(f"{out}: --overwrite replaces only a previous {kind} folder (one with {marker})")


def cmd_predict(args: argparse.Namespace) -> None:
    check_output_folder(Path(args.out), args.overwrite)
    detector = _load(args)
    if detector.thresholds_ is None:
        log.warning("%s has no thresholds: raw scores only (calibrate with 'tailedcore calibrate')", args.model)
    _warn_about_thresholds(detector, args.model)
    predictions = detector.predict(args.inputs, strict=args.strict)
    if not predictions.paths:
        if not predictions.failures:
            raise ValueError(f"no images in {' '.join(args.inputs)}")
        raise ValueError(f"no image could be scored: {len(predictions.failures)} unreadable, e.g. "
                         f"{predictions.failures[0][1]}")
    with staged_directory(Path(args.out)) as staging:
        records = write_predictions(predictions, staging, detector.resize, detector.crop, args.min_area)
    for record in records:
        if "error" in record:
            print(f"tailedcore: skipped: {' '.join(record['error'].split())}", file=sys.stderr)
            continue
        decision = f"{record['decision']}\t{record['score']:.3f}\t" if "decision" in record else ""
        product = f"product {record['product']}\t" if "product" in record else ""
        print(f"{decision}{record['raw_score']:.6g}\t{product}{record['image']}")
    failed = f", {len(predictions.failures)} unreadable" if predictions.failures else ""
    print(f"{len(predictions.paths)} images scored{failed} -> {args.out}")


def _warn_about_thresholds(detector, model: str) -> None:
    """Warn when the thresholds rest on few images or on scores of another search."""
    if detector.thresholds_ is not None and detector.thresholds_.few_images:
        log.warning("%s: %s", model, detector.thresholds_.few_images_warning())
    mismatch = search_mismatch(detector.thresholds_, detector.search_setting)
    if mismatch:
        log.warning("%s: %s", model, mismatch)


def cmd_calibrate(args: argparse.Namespace) -> None:
    if args.validation and "false_alarm_rate" in vars(args):
        raise UsageError("--false-alarm-rate applies to --normal; --validation takes the F1-max thresholds")
    if args.out:
        check_writable_file(Path(args.out), args.overwrite)
    else:
        check_writable_file(Path(args.model), overwrite=True)
    if args.validation and "calibration_scope" in vars(args):
        raise UsageError("--calibration-scope applies to --normal; --validation takes global F1-max thresholds")
    detector = _load(args)
    if args.normal:
        thresholds = detector.calibrate(args.normal)
    else:
        thresholds = calibrate_on_validation(detector, args.validation)
        detector.set_thresholds(thresholds)
    detector.save(args.out or args.model)
    print(f"image threshold {thresholds.image:.6g}, pixel threshold {thresholds.pixel:.6g} ({thresholds.source}) "
          f"-> {args.out or args.model}")
    for line in product_threshold_lines(detector):
        print(line)


def cmd_evaluate(args: argparse.Namespace) -> None:
    check_output_folder(Path(args.out), args.overwrite, "evaluation")
    detector = _load(args)
    evaluation = evaluate(detector, args.data)
    with staged_directory(Path(args.out)) as staging:
        table = write_evaluation(evaluation, staging)
    print(table)


# The demo's image sizes, reduced for speed.
DEMO_SIZES = {"features__resize": 160, "features__crop": 144}


def cmd_demo(args: argparse.Namespace) -> None:
    from ..bench.demo import run_demo

    data = args.data
    if data is not None and not Path(data).is_dir():
        log.warning("%s: not found; using procedurally generated images instead", data)
        data = None
    sizes = {**DEMO_SIZES, **given(args, SETTING_OPTIONS)}
    print(run_demo(data, args.out, resize=sizes["features__resize"], crop=sizes["features__crop"], seed=args.seed,
                   progress=not args.quiet))


def cmd_make_nlt(args: argparse.Namespace) -> None:
    from ..bench.nlt import build, plan_from_manifests, plan_profile

    if args.from_manifests:
        plan = plan_from_manifests(args.source, args.from_manifests)
    else:
        plan = plan_profile(args.source, args.profile, args.noise, args.seed)
    info = build(args.source, args.dest, plan, link=not args.copy, keep_injected_in_test=args.keep_injected_in_test,
                 overwrite=args.overwrite)
    for name, item in info["classes"].items():
        print(f"{name:20s} {item['role']:4s} kept {item['kept']:4d} of {item['train_available']:4d}  "
              f"injected {item['injected']:3d}")
    print(f"{info['protocol']} protocol -> {args.dest}")


def cmd_convert_visa(args: argparse.Namespace) -> None:
    from ..bench.visa import convert_visa

    counts = convert_visa(args.visa_root, args.split_csv, args.dest, link=not args.copy, overwrite=args.overwrite)
    for name, item in counts.items():
        print(f"{name:20s} " + "  ".join(f"{key} {value:5d}" for key, value in item.items()))
    print(f"{len(counts)} objects -> {args.dest}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from ..bench.benchmark import run_benchmark, run_seeds
    from ..report.benchmark_pages import results_markdown, summary_markdown

    options = given(args, SETTING_OPTIONS)
    search = options.pop("search__kind", "exact")
    if args.seeds:
        if not args.profile:
            raise UsageError("--seeds needs --profile (DATA is then the source root the sets are built from)")
        summary = run_seeds(args.data, args.out, args.methods, args.profile, args.noise, args.seeds, search, options,
                            not args.quiet, args.keep_injected_in_test, _benchmark_method_options(args), args.resume)
        print(summary_markdown(summary, args.profile))
    else:
        if args.profile:
            raise UsageError("--profile needs --seeds (or build the set first with make-nlt)")
        if args.resume:
            raise UsageError("--resume needs --seeds")
        results = run_benchmark(args.data, args.out, args.methods, search, options, not args.quiet,
                                _benchmark_method_options(args))
        print(results_markdown(results))
        if args.stage_times:
            for method, block in results["methods"].items():
                stages = block["diagnostics"].get("stages", [])
                print(f"\n{method}\n" + stage_table([[s["stage"], s["seconds"], s["peak_rss_mib"]] for s in stages]))


def cmd_export(args: argparse.Namespace) -> None:
    from ..runtimes import export

    check_writable_folder(Path(args.out).parent, Path(args.out))
    detector = load(args.model, progress=not args.quiet)
    int8_images = collect_images(args.int8_calibration, recursive=True) if args.int8_calibration else []
    if args.int8_calibration and not int8_images:
        raise UsageError(f"--int8-calibration {' '.join(args.int8_calibration)}: no images there")
    out = export(detector, args.out, args.format, overwrite=args.overwrite, int8_calibration=int8_images)
    size = sum(path.stat().st_size for path in out.iterdir()) / 2**20
    print(f"{args.model} -> {out} ({args.format}, {size:.1f} MiB); predict with: tailedcore predict {out} IMAGES "
          "--out DIR")


def cmd_products(args: argparse.Namespace) -> None:
    from ..report.products_page import HEADER, product_rows, products_page

    detector = load(args.model, progress=False)
    products = detector.products_
    if products is None:
        print(f"{args.model}: no products (written before models kept them)")
        return
    rows = product_rows(products, detector.thresholds_, detector.product_thresholds_)
    print(markdown_table(HEADER, rows, percent=False))
    if args.out:
        out = Path(args.out)
        check_writable_folder(out.parent, out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "products.html", products_page(products, rows, args.model))
        print(f"-> {out / 'products.html'}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve

    detector = _load(args)
    if detector.thresholds_ is None:
        log.warning("%s has no thresholds: answers carry raw scores and no decision", args.model)
    _warn_about_thresholds(detector, args.model)
    log.info("serving with search %s, features by %s (%s)", describe_search(detector.search_setting),
             detector.run.runtime, detector.features.precision)
    serve(detector, args.host, args.port, max_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
          max_batch=args.max_batch)

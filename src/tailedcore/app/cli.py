"""Command line: ``tailedcore [OPTIONS] COMMAND ...``, one command per step of the work.

A thin shell over the Python API. Errors are one line on stderr (``--debug``
shows the traceback); exit codes: 0 success, 1 failure, 2 usage error,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from .. import __version__
from .._io import atomic_write_text, check_writable_file, check_writable_folder, markdown_table, staged_directory
from ..data import collect_images
from ..detector import METHODS, Detector, describe_search, load
from ..engine import ENGINES
from ..evaluation import calibrate_on_validation, evaluate
from ..policies import LOF_SCALES, LOF_SHARES, TAIL_CORESETS, Policy, TailedCorePolicy
from ..report.writers import stage_table, write_evaluation, write_predictions
from ..routing import SEARCH_SCOPES
from ..runtimes import EXPORT_FORMATS, RUNTIMES
from ..scoring import SEARCHES, SERVING_SEARCH
from ..store import STORE_DTYPES
from ..tail import TAIL_ESTIMATORS
from ..thresholds import CALIBRATION_SCOPES, MIN_IMAGES

log = logging.getLogger("tailedcore")

# Policy parameters the CLI exposes: option -> (building block of the policy, its parameter, type, help).
# Defaults are never written here: they are read from the building blocks (policies.py, tail.py).
POLICY_OPTIONS = {
    "--coreset-ratio": ("coreset", "ratio", float, "share of patches in memory"),
    "--exact-coreset-rows": ("coreset", "exact_rows", int, "a coreset over more rows is composable (greedy "
                                                           "runs over shards of this many rows; linear time); "
                                                           "None = always exact, the paper"),
    "--lof-k": ("lof", "k", int, "LOF neighbours (softpatch, tailedcore)"),
    "--lof-drop": ("lof", "drop", float, "share of patches dropped by LOF (softpatch, tailedcore)"),
    "--lof-scale": ("lof", "scale", str, "which LOF scores are dropped: global (the paper), image (relative to "
                                         "each image's median: spares images unlike the others everywhere) or "
                                         "product (the top share of each product the model found)"),
    "--lof-share": ("lof", "share", str, "how much LOF drops: fixed (exactly --lof-drop, the paper) or fence "
                                         "(scores above the upper Tukey fence, at most --lof-drop)"),
    "--tail-keep": ("tail", "keep", float, "TailSampler trim share (tailedcore, paper estimator)"),
    "--tail-share": ("tail", "share", float, "15%% rule of max K (tailedcore)"),
    "--tail-distance": ("tail", "distance", float, "cosine distance that cuts linkage clusters (tailedcore)"),
    "--max-tail-class": ("tail", "max_tail_class", int, "largest class size counted as tail (tailedcore, linkage)"),
    "--view-step": ("views", "step_degrees", float, "rotation step of tail views in degrees (tailedcore)"),
    "--tail-coreset": ("tail_coreset", "scope", str, "tail coreset scope: joint (the paper), per-image or "
                                                     "two-round (tailedcore)"),
    "--max-tail-rows": ("tail_coreset", "max_rows", int, "a joint tail coreset over more patch rows (with views) "
                                                         "runs two-round (tailedcore)"),
}
# Options whose values come from a fixed list (argparse refuses others as a usage error).
OPTION_CHOICES = {"--tail-coreset": TAIL_CORESETS, "--lof-scale": LOF_SCALES, "--lof-share": LOF_SHARES}
DEFAULT_POLICY = TailedCorePolicy()


def _policy_default(block: str, name: str):
    """The default of a policy parameter, read from its building block (any tail estimator that has it)."""
    classes = TAIL_ESTIMATORS.values() if block == "tail" else [type(getattr(DEFAULT_POLICY, block))]
    return next(getattr(cls(), name) for cls in classes if name in inspect.signature(cls).parameters)


def _detector_default(name: str):
    return inspect.signature(Detector).parameters[name].default


STAGES_HELP = ("strides of the backbone maps that feed the patch feature, from 4 8 16 32 (default "
               + " ".join(map(str, _detector_default("stages"))) + ")")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    default = _detector_default
    group.add_argument("--backbone", default=default("backbone"), help=f"backbone name (default {default('backbone')})")
    group.add_argument("--weights", help="local backbone weights file (default: the packaged weights)")
    group.add_argument("--stages", type=int, nargs="+", default=list(default("stages")), metavar="STRIDE",
                       help=STAGES_HELP)
    group.add_argument("--resize", type=int, default=default("resize"),
                       help=f"shorter side before cropping (default {default('resize')})")
    group.add_argument("--crop", type=int, default=default("crop"),
                       help=f"center crop size, a multiple of 16 (default {default('crop')})")
    group.add_argument("--seed", type=int, default=default("seed"), help=f"random seed (default {default('seed')})")
    group.add_argument("--store-dtype", choices=STORE_DTYPES, default=default("store_dtype"),
                       help="what the fit keeps of each training patch on disk: float32 (default) or float16 "
                            "(half the disk; the memory bank is rounded to float16)")
    group.add_argument("--calibration-share", type=float,
                       help=f"share of training images set aside for thresholds (default "
                            f"{default('calibration_share')}, none with --calibration; 0 = none)")
    group.add_argument("--false-alarm-rate", type=float, default=default("false_alarm_rate"),
                       help=f"for thresholds (default {default('false_alarm_rate')})")
    group.add_argument("--calibration-scope", choices=CALIBRATION_SCOPES, default=default("calibration_scope"),
                       help="product: each product with enough calibration images gets its own thresholds, the "
                            "others the global ones; global: one threshold for all (default "
                            f"{default('calibration_scope')})")
    _add_method_options(group)


def _add_method_options(parser) -> None:
    parser.add_argument("--tail-estimator", choices=tuple(TAIL_ESTIMATORS),
                        help=f"how tail images are found (tailedcore): linkage or paper (the published "
                             f"TailSampler); default {DEFAULT_POLICY.tail.name}")
    for option, (block, name, kind, text) in POLICY_OPTIONS.items():
        parser.add_argument(option, type=kind, choices=OPTION_CHOICES.get(option),
                            help=f"{text}; default {_policy_default(block, name)}")


def _given_policy_options(args: argparse.Namespace) -> dict[str, object]:
    """{option: value} of the POLICY_OPTIONS and --tail-estimator given on the command line."""
    given = {}
    for option in ["--tail-estimator", *POLICY_OPTIONS]:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            given[option] = value
    return given


def _policy_params(given: dict[str, object], policy: Policy) -> tuple[dict, list[str]]:
    """Nested parameters (``policy__lof__k`` ...) for ``policy`` from the given options, and the options
    that do not apply to it (no such building block, or a parameter its tail estimator lacks)."""
    blocks = policy.get_params(deep=False)
    params, tail_values, refused = {}, {}, []
    for option, value in given.items():
        if option == "--tail-estimator":
            continue
        block, name = POLICY_OPTIONS[option][:2]
        if block not in blocks:
            refused.append(option)
        elif block == "tail":
            tail_values[option] = (name, value)
        else:
            params[f"policy__{block}__{name}"] = value
    if "tail" not in blocks:
        return params, refused + (["--tail-estimator"] if "--tail-estimator" in given else [])
    estimator = TAIL_ESTIMATORS[given["--tail-estimator"]] if "--tail-estimator" in given else type(blocks["tail"])
    accepted = inspect.signature(estimator).parameters
    refused += [option for option, (name, _) in tail_values.items() if name not in accepted]
    if "--tail-estimator" in given or tail_values:
        params["policy__tail"] = estimator(**{name: value for name, value in tail_values.values() if name in accepted})
    return params, refused


MODEL_SEARCH = "the model's own, the one it was fitted with; exact is the reference"


def _add_run_options(parser: argparse.ArgumentParser, default_search: str = MODEL_SEARCH) -> None:
    parser.add_argument("--batch-size", type=int, default=_detector_default("batch_size"),
                        help=f"images per backbone batch (default {_detector_default('batch_size')})")
    parser.add_argument("--search", choices=list(SEARCHES), default=None,
                        help=f"nearest-neighbour search (default: {default_search}; ivf-batched: ivf's lists, "
                             "scanned by matrix products, faster for batches)")
    parser.add_argument("--search-option", action="append", default=[], metavar="KEY=VALUE",
                        help="search setting, e.g. nprobe=16 (ivf) or ef_search=64 (hnsw); repeatable")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "int8"], default=None,
                        help="test-time feature arithmetic (default float32; bfloat16 with torch or openvino, "
                             "int8 with an onnx export holding an int8 graph: faster, not bitwise equal)")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="where the work runs: local (default, this process) or ray (tasks on a Ray cluster; "
                             "the same result; needs pip install 'tailedcore[ray]')")
    parser.add_argument("--ray-address", help="with --engine ray: the cluster to join, e.g. 10.0.0.5:6379 "
                                              "(default: start a local one)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="what computes test-time features: torch, or an export's graph run by onnx or "
                             "openvino (default: torch for a model file, the export's format for an export folder)")
    parser.add_argument("--search-scope", choices=SEARCH_SCOPES, default=None,
                        help="global: every patch against the whole memory (default, the paper); product: against "
                             "the memory of its image's product (and the products about as near)")
    parser.add_argument("--unknown-factor", type=_factor_or_none, default=argparse.SUPPRESS,
                        help="an image farther from its product than this many times the product's spread is "
                             "an unknown product; none = never (default: the model's, "
                             f"{_detector_default('unknown_factor')} unless fitted with another)")


def _factor_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got '{text}'") from None


def _search_options(args: argparse.Namespace) -> dict | None:
    options = {}
    for item in args.search_option:
        key, _, value = item.partition("=")
        if not key or not value.isdigit():
            raise UsageError(f"--search-option {item}: expected KEY=INTEGER, e.g. nprobe=16")
        options[key] = int(value)
    return options or None


def _detector_params(args: argparse.Namespace) -> tuple[dict, dict]:
    """(pipeline parameters, nested policy parameters) of ``fit``."""
    params = {
        "backbone": args.backbone, "weights": args.weights, "stages": tuple(args.stages), "resize": args.resize,
        "crop": args.crop,
        "seed": args.seed, "batch_size": args.batch_size, "calibration_share": args.calibration_share,
        "false_alarm_rate": args.false_alarm_rate, "progress": not args.quiet, "store_dtype": args.store_dtype,
        "calibration_scope": args.calibration_scope,
    }
    if "unknown_factor" in vars(args):  # given (none included)
        params["unknown_factor"] = args.unknown_factor
    for option in ("search", "precision", "engine", "ray_address", "runtime", "search_scope"):
        if getattr(args, option):
            params[option] = getattr(args, option)
    params["search_options"] = _search_options(args)
    if not args.search:  # the model keeps the serving search: every command then gives the same answer
        params["search"] = SERVING_SEARCH["search"]
        params["search_options"] = params["search_options"] or SERVING_SEARCH["search_options"]
    policy_params, refused = _policy_params(_given_policy_options(args), METHODS[args.method].default_policy())
    if refused:
        raise UsageError(f"{refused[0]} does not apply to --method {args.method}"
                         + (" with this tail estimator" if refused[0].startswith(("--tail", "--max-tail-c")) else ""))
    return params, policy_params


def _benchmark_method_options(args: argparse.Namespace) -> dict[str, dict]:
    """Per-method nested policy parameters of a benchmark: each given option goes to the methods it applies to."""
    given = _given_policy_options(args)
    per_method, refused_by = {}, {}
    for method in args.methods:
        per_method[method], refused = _policy_params(given, METHODS[method].default_policy())
        for option in refused:
            refused_by.setdefault(option, set()).add(method)
    for option, methods in refused_by.items():
        if methods == set(args.methods):
            raise UsageError(f"{option} does not apply to --methods {' '.join(args.methods)}")
    return per_method


class UsageError(ValueError):
    """A combination of options that does not make sense."""


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception, so that a run cleans up (temporary feature files) as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def cmd_fit(args: argparse.Namespace) -> None:
    if args.calibration and args.calibration_share:
        raise UsageError("--calibration and --calibration-share both set the thresholds: give one")
    check_writable_file(Path(args.out), args.overwrite)
    params, policy_params = _detector_params(args)
    if args.calibration_share is None:  # with a calibration folder, train on every image
        params["calibration_share"] = 0.0 if args.calibration else _detector_default("calibration_share")
    detector = METHODS[args.method](**params).set_params(**policy_params)
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
            + (f"; {others} use the global ones (fewer than {MIN_IMAGES} calibration images)" if others else "")]


SERVING_MAX_BATCH = 8


def _load(args: argparse.Namespace):
    overrides = {"progress": not args.quiet, "batch_size": args.batch_size}
    for option in ("search", "precision", "engine", "ray_address", "runtime", "search_scope"):
        if getattr(args, option):
            overrides[option] = getattr(args, option)
    if args.search_option:
        overrides["search_options"] = _search_options(args)
    if "unknown_factor" in vars(args):  # given (none included)
        overrides["unknown_factor"] = args.unknown_factor
    return load(args.model, **overrides)


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
    mismatch = detector.threshold_search_mismatch()
    if mismatch:
        log.warning("%s: %s", model, mismatch)


def cmd_calibrate(args: argparse.Namespace) -> None:
    if args.validation and args.false_alarm_rate is not None:
        raise UsageError("--false-alarm-rate applies to --normal; --validation takes the F1-max thresholds")
    if args.out:
        check_writable_file(Path(args.out), args.overwrite)
    else:
        check_writable_file(Path(args.model), overwrite=True)
    detector = _load(args)
    if args.validation and args.calibration_scope is not None:
        raise UsageError("--calibration-scope applies to --normal; --validation takes global F1-max thresholds")
    if args.false_alarm_rate is not None:
        detector.set_params(false_alarm_rate=args.false_alarm_rate)
    if args.calibration_scope is not None:
        detector.set_params(calibration_scope=args.calibration_scope)
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


def cmd_demo(args: argparse.Namespace) -> None:
    from ..bench.demo import run_demo

    data = args.data
    if data is not None and not Path(data).is_dir():
        log.warning("%s: not found; using procedurally generated images instead", data)
        data = None
    print(run_demo(data, args.out, resize=args.resize, crop=args.crop, seed=args.seed, progress=not args.quiet))


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

    options = {"resize": args.resize, "crop": args.crop, "batch_size": args.batch_size,
               "backbone": args.backbone, "weights": args.weights, "stages": tuple(args.stages),
               "precision": args.precision or "float32", "store_dtype": args.store_dtype,
               "engine": args.engine or "local",
               "ray_address": args.ray_address, "search_options": _search_options(args)}
    search = args.search or "exact"
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
    rows = product_rows(products, detector.product_thresholds_, detector.thresholds_ is not None)
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
    log.info("serving with search %s %s, features by %s (%s)", detector.search, detector.search_options or "",
             detector.runtime, detector.precision)
    serve(detector, args.host, args.port, max_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
          max_batch=args.max_batch)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (backbone, exact search) and faiss (approximate search)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help states its default, unless it already does or there is none to state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default %(default)s)" if text else "(default %(default)s)"


DESCRIPTION = "Anomaly detection for industrial image sets (PatchCore, SoftPatch, TailedCore)"
EPILOG = "Global options go before or after the command. 'tailedcore COMMAND --help' describes each command."


def _add_global_options(parser, suppress: bool) -> None:
    """--debug, --quiet, --threads. Commands take them too, with defaults suppressed so that a value
    given before the command is kept."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--debug", action="store_true", default=default(False), help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", default=default(False), help="no progress bars")
    parser.add_argument("--threads", type=int, default=default(None),
                        help="CPU threads for torch, faiss and the BLAS / OpenMP pools (default: one per core "
                             "this process may use); fix it to make benchmark figures exactly repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailedcore", epilog=EPILOG, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tailedcore {__version__}")
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit a model on a dataset root or image folder")
    fit.add_argument("data", help="MVTec-layout root (all train/good merged) or a folder of images")
    fit.add_argument("--method", choices=sorted(METHODS), default="tailedcore", help="(default tailedcore)")
    fit.add_argument("--out", required=True, help="model file to write (.safetensors)")
    fit.add_argument("--cache", help="folder for feature files: completed batches are kept and reused by a "
                                     "re-run (default: temporary, removed)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    fit.add_argument("--strict", action="store_true",
                     help="fail on the first unreadable training image or image upscaled more than 4x")
    fit.add_argument("--stage-times", action="store_true", help="print wall time and peak RSS of every stage")
    fit.add_argument("--calibration", nargs="+", help="normal images/folders to calibrate thresholds on")
    _add_model_options(fit)
    _add_run_options(fit, f"{describe_search(SERVING_SEARCH)}, kept in the model")
    fit.set_defaults(run=cmd_fit)

    predict = commands.add_parser("predict", help="score images; write scores and heatmap overlays")
    predict.add_argument("model", help="model file or export folder")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder (new or empty)")
    predict.add_argument("--overwrite", action="store_true", help="replace a previous run's output folder")
    predict.add_argument("--strict", action="store_true",
                         help="fail on the first unreadable image or image upscaled more than 4x")
    predict.add_argument("--min-area", type=int, default=16, help="smallest defect blob kept in masks, in pixels")
    _add_run_options(predict)
    predict.set_defaults(run=cmd_predict)

    calibrate = commands.add_parser("calibrate", help="set the model's thresholds from normal or labeled images")
    calibrate.add_argument("model", help="model file (rewritten unless --out)")
    source = calibrate.add_mutually_exclusive_group(required=True)
    source.add_argument("--normal", nargs="+", help="normal images or folders: threshold at the false-alarm rate")
    source.add_argument("--validation", help="MVTec-layout root with labeled test splits: F1-max thresholds")
    calibrate.add_argument("--false-alarm-rate", type=float,
                           help="with --normal: share of normal images allowed above the threshold "
                                "(default: the model's, 0.01 unless fitted with another)")
    calibrate.add_argument("--calibration-scope", choices=CALIBRATION_SCOPES,
                           help="with --normal: product (each product with enough images its own thresholds) or "
                                "global (default: the model's)")
    calibrate.add_argument("--out", help="write the calibrated model here instead (a new file unless --overwrite)")
    calibrate.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    _add_run_options(calibrate)
    calibrate.set_defaults(run=cmd_calibrate)

    evaluate_cmd = commands.add_parser("evaluate", help="per-class metrics on an MVTec-layout test split")
    evaluate_cmd.add_argument("model", help="model file or export folder")
    evaluate_cmd.add_argument("data", help="MVTec-layout root")
    evaluate_cmd.add_argument("--out", required=True, help="output folder (new or empty)")
    evaluate_cmd.add_argument("--overwrite", action="store_true", help="replace a previous evaluation's folder")
    _add_run_options(evaluate_cmd)
    evaluate_cmd.set_defaults(run=cmd_evaluate)

    nlt = commands.add_parser("make-nlt", help="build a noisy long-tail training set from an MVTec-layout root")
    nlt.add_argument("source", help="MVTec-layout root (never modified)")
    nlt.add_argument("--dest", required=True, help="destination folder (must not exist unless --overwrite)")
    nlt.add_argument("--profile", default="pareto", help="step-k1, step-k4 (any step-kK) or pareto (default)")
    nlt.add_argument("--noise", type=float, default=0.1, help="defective share injected into head classes (0.1)")
    nlt.add_argument("--seed", type=int, default=0)
    nlt.add_argument("--from-manifests", metavar="DIR", help="rebuild from prune_good.txt + inject_defects.txt")
    files = nlt.add_mutually_exclusive_group()
    files.add_argument("--link", action="store_true", help="hard-link files (default; copies across filesystems)")
    files.add_argument("--copy", action="store_true", help="copy files")
    nlt.add_argument("--keep-injected-in-test", action="store_true",
                     help="leave injected images in the test split (the reference benchmark's leaky variant)")
    nlt.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    nlt.set_defaults(run=cmd_make_nlt)

    visa = commands.add_parser("convert-visa", help="turn the VisA release into an MVTec-layout root")
    visa.add_argument("visa_root", help="VisA release root (never modified)")
    visa.add_argument("--split-csv", required=True, help="split CSV with columns object, split, label, image, mask")
    visa.add_argument("--dest", required=True, help="destination folder (must not exist unless --overwrite)")
    visa_files = visa.add_mutually_exclusive_group()
    visa_files.add_argument("--link", action="store_true", help="hard-link images (default; copies across filesystems)")
    visa_files.add_argument("--copy", action="store_true", help="copy images")
    visa.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    visa.set_defaults(run=cmd_convert_visa)

    bench = commands.add_parser("benchmark", help="fit and evaluate several methods; head/tail report")
    bench.add_argument("data", help="an NLT set (make-nlt) or any MVTec-layout root; with --seeds the source root")
    bench.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS), help="methods to run")
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--seeds", nargs="+", type=int, help="build one NLT set per seed from DATA and run each")
    bench.add_argument("--profile", help="NLT profile for --seeds (step-k1, step-k4, pareto)")
    bench.add_argument("--noise", type=float, default=0.1, help="noise for --seeds (default 0.1)")
    bench.add_argument("--keep-injected-in-test", action="store_true", help="leaky protocol for --seeds")
    bench.add_argument("--resume", action="store_true",
                       help="with --seeds, reuse seed-N/results.json when it holds every requested method")
    bench.add_argument("--backbone", default=_detector_default("backbone"), help="backbone name")
    bench.add_argument("--weights", help="local backbone weights file (default: the packaged weights)")
    bench.add_argument("--stages", type=int, nargs="+", default=list(_detector_default("stages")), metavar="STRIDE",
                       help=STAGES_HELP)
    bench.add_argument("--resize", type=int, default=_detector_default("resize"), help="shorter side before cropping")
    bench.add_argument("--crop", type=int, default=_detector_default("crop"), help="center crop size")
    bench.add_argument("--store-dtype", choices=STORE_DTYPES, default=_detector_default("store_dtype"),
                       help="what each fit keeps of a training patch on disk (default float32)")
    bench.add_argument("--stage-times", action="store_true",
                       help="print wall time and peak RSS of every stage of each method")
    _add_method_options(bench.add_argument_group("method"))
    _add_run_options(bench, "exact, the benchmark protocol")
    bench.set_defaults(run=cmd_benchmark)

    export_cmd = commands.add_parser("export", help="write the model's backbone and patch aggregation as one "
                                                     "ONNX or OpenVINO graph, beside the model file")
    export_cmd.add_argument("model", help="model file")
    export_cmd.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    export_cmd.add_argument("--out", required=True, help="export folder (new or empty)")
    export_cmd.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    export_cmd.add_argument("--int8-calibration", nargs="+", metavar="IMAGES",
                            help="onnx: also write an int8 graph, calibrated on these normal images/folders "
                                 "(run it with --precision int8)")
    export_cmd.set_defaults(run=cmd_export)

    products_cmd = commands.add_parser("products", help="the products the model found in its training set")
    products_cmd.add_argument("model", help="model file")
    products_cmd.add_argument("--out", help="folder for products.html (thumbnails of each product)")
    products_cmd.set_defaults(run=cmd_products)

    serve_cmd = commands.add_parser("serve", help="HTTP service and web page for one model")
    serve_cmd.add_argument("model", help="model file or export folder")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    serve_cmd.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20)")
    serve_cmd.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image area")
    serve_cmd.add_argument("--max-batch", type=int, default=SERVING_MAX_BATCH,
                           help="score up to this many concurrent requests together "
                                f"(default {SERVING_MAX_BATCH}; 1: one at a time)")
    _add_run_options(serve_cmd)
    serve_cmd.set_defaults(run=cmd_serve)

    demo = commands.add_parser("demo", help="fit all three methods on a small noisy long-tail set")
    demo.add_argument("--data", help="MVTec-layout root (default: generated textures)")
    demo.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    demo.add_argument("--resize", type=int, default=160, help="reduced for speed (default 160)")
    demo.add_argument("--crop", type=int, default=144, help="reduced for speed (default 144)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)
    for command in commands.choices.values():
        command.formatter_class = DefaultsHelpFormatter
        _add_global_options(command.add_argument_group("global options (also before the command)"), suppress=True)
    parser.description = f"{DESCRIPTION}: {', '.join(commands.choices)}."
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        set_threads(args.threads)
    logging.basicConfig(level=logging.INFO if not args.quiet else logging.WARNING, format="%(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        args.run(args)
    except UsageError as error:
        parser.error(str(error))
    except KeyboardInterrupt as interruption:
        kept = " (completed feature batches are kept in --cache)" if getattr(args, "cache", None) else ""
        terminated = isinstance(interruption, Terminated)
        print(f"tailedcore: {'terminated' if terminated else 'interrupted'}{kept}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as error:  # noqa: BLE001 - the CLI turns any failure into one line
        if args.debug:
            traceback.print_exc()
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"tailedcore: error: {message}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())

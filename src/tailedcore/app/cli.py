"""Command line: ``tailedcore [OPTIONS] COMMAND ...``, one command per step of the work.

A thin shell over the Python API. Errors are one line on stderr (``--debug``
shows the traceback); exit codes: 0 success, 1 failure, 2 usage error,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from .. import __version__
from .._io import staged_directory
from ..detector import METHODS, load
from ..evaluation import calibrate_on_validation, evaluate
from ..policies import TAIL_CORESETS
from ..report.writers import stage_table, write_evaluation, write_predictions
from ..tail import TAIL_ESTIMATORS

log = logging.getLogger("tailedcore")

# Method parameters the CLI exposes: option name -> (parameter, type, help).
METHOD_OPTIONS = {
    "--lof-k": ("lof_k", int, "LOF neighbours (softpatch, tailedcore; default 6)"),
    "--lof-drop": ("lof_drop", float, "share of patches dropped by LOF (default 0.15)"),
    "--tail-estimator": ("tail_estimator", str, "how tail images are found (tailedcore): linkage (default) or "
                                                "paper (the published TailSampler)"),
    "--tail-keep": ("tail_keep", float, "TailSampler trim share (tailedcore, paper estimator; default 0.85)"),
    "--tail-share": ("tail_share", float, "15%% rule of max K (tailedcore; default 0.15)"),
    "--tail-distance": ("tail_distance", float, "cosine distance that cuts linkage clusters (default 0.4)"),
    "--max-tail-class": ("max_tail_class", int, "largest class size counted as tail (linkage; default 19)"),
    "--view-step": ("view_step_degrees", float, "rotation step of tail views in degrees (default 15)"),
    "--tail-coreset": ("tail_coreset", str, "tail coreset scope: joint (the paper, default), per-image or "
                                            "two-round"),
}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--backbone", default="efficientnet-lite0", help="backbone name (default efficientnet-lite0)")
    group.add_argument("--weights", help="local backbone weights file (default: the packaged weights)")
    group.add_argument("--resize", type=int, default=256, help="shorter side before cropping (default 256)")
    group.add_argument("--crop", type=int, default=224, help="center crop size, a multiple of 16 (default 224)")
    group.add_argument("--coreset-ratio", type=float, default=0.1, help="share of patches in memory (default 0.1)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--calibration-share", type=float,
                       help="share of training images set aside for thresholds (default 0.1, none with "
                            "--calibration; 0 = none)")
    group.add_argument("--false-alarm-rate", type=float, default=0.01, help="for thresholds (default 0.01)")
    _add_method_options(group)


# Options whose values come from a fixed list (argparse refuses others as a usage error).
OPTION_CHOICES = {"--tail-coreset": TAIL_CORESETS, "--tail-estimator": tuple(TAIL_ESTIMATORS)}


def _add_method_options(parser) -> None:
    for option, (_, kind, text) in METHOD_OPTIONS.items():
        parser.add_argument(option, type=kind, choices=OPTION_CHOICES.get(option), help=text)


def _given_method_options(args: argparse.Namespace) -> dict[str, object]:
    """{option: value} of the METHOD_OPTIONS given on the command line."""
    given = {}
    for option in METHOD_OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            given[option] = value
    return given


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=16, help="images per backbone batch (default 16)")
    parser.add_argument("--search", choices=["exact", "flat", "ivf", "hnsw"], default=None,
                        help="nearest-neighbour search (default: exact)")
    parser.add_argument("--search-option", action="append", default=[], metavar="KEY=VALUE",
                        help="search setting, e.g. nprobe=16 (ivf) or ef_search=64 (hnsw); repeatable")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default=None,
                        help="backbone arithmetic (default float32; bfloat16 is faster, not bitwise equal)")


def _search_options(args: argparse.Namespace) -> dict | None:
    options = {}
    for item in args.search_option:
        key, _, value = item.partition("=")
        if not key or not value.isdigit():
            raise UsageError(f"--search-option {item}: expected KEY=INTEGER, e.g. nprobe=16")
        options[key] = int(value)
    return options or None


def _detector_params(args: argparse.Namespace) -> dict:
    cls = METHODS[args.method]
    params = {
        "backbone": args.backbone, "weights": args.weights, "resize": args.resize, "crop": args.crop,
        "coreset_ratio": args.coreset_ratio, "seed": args.seed, "batch_size": args.batch_size,
        "calibration_share": args.calibration_share, "false_alarm_rate": args.false_alarm_rate,
        "progress": not args.quiet,
    }
    for option in ("search", "precision"):
        if getattr(args, option):
            params[option] = getattr(args, option)
    params["search_options"] = _search_options(args)
    accepted = cls._param_names()
    for option, value in _given_method_options(args).items():
        name = METHOD_OPTIONS[option][0]
        if name not in accepted:
            raise UsageError(f"{option} does not apply to --method {args.method}")
        params[name] = value
    return params


def _benchmark_method_options(args: argparse.Namespace) -> dict[str, dict]:
    """Per-method parameters of a benchmark: each given option goes to the methods that take it."""
    per_method: dict[str, dict] = {method: {} for method in args.methods}
    given = _given_method_options(args)
    if args.max_tail_rows is not None:
        given["--max-tail-rows"] = args.max_tail_rows
    for option, value in given.items():
        name = METHOD_OPTIONS[option][0] if option in METHOD_OPTIONS else "max_tail_rows"
        takers = [method for method in args.methods if name in METHODS[method]._param_names()]
        if not takers:
            raise UsageError(f"{option} does not apply to --methods {' '.join(args.methods)}")
        for method in takers:
            per_method[method][name] = value
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
    params = _detector_params(args)
    if args.calibration_share is None:  # with a calibration folder, train on every image
        params["calibration_share"] = 0.0 if args.calibration else 0.1
    detector = METHODS[args.method](**params)
    detector.fit(args.data, cache_dir=args.cache, strict=args.strict)
    if args.calibration:
        detector.calibrate(args.calibration)
    elif detector.thresholds_ is None:
        log.warning("no thresholds: %s", _no_thresholds_reason(detector))
    detector.save(args.out)
    print(f"{args.method}: {len(detector.memory_)} memory features from {len(detector.training_paths_)} "
          f"training images -> {args.out}")
    print("\n".join(f"  {line}" for line in fit_summary(detector, Path(args.out))))
    if args.profile_stages:
        print(stage_table(detector.profile_.table()))


def _no_thresholds_reason(detector) -> str:
    if detector.calibration_share <= 0:
        return "--calibration-share 0 and no --calibration"
    return (f"no class of {detector.calibration_min_class} or more training images to set images aside from; "
            "use --calibration DIR")


def fit_summary(detector, model_file: Path) -> list[str]:
    """What a fit did: images used and skipped, the tail (TailedCore), memory rows, thresholds, file size."""
    info = detector.memory_.info
    lines = [f"images: {len(detector.training_paths_)} used, {len(detector.skipped_)} skipped (unreadable), "
             f"{len(detector.calibration_paths_)} set aside for thresholds"]
    if "tail_images" in info:
        lines.append(f"tail: {info['tail_images']} images found, max K {info['max_k']}")
    rows = f"memory: {len(detector.memory_)} rows"
    if "head_memory" in info and "tail_images" in info:
        rows += f" ({info.get('tail_memory', 0)} from the tail, {info['head_memory']} from the head)"
    lines.append(rows)
    thresholds = detector.thresholds_
    if thresholds is None:
        lines.append(f"thresholds: not set ({_no_thresholds_reason(detector)})")
    else:
        few = f"; a rough guess: at least {thresholds.images_needed} images needed" if thresholds.few_images else ""
        lines.append(f"thresholds: image {thresholds.image:.4g}, pixel {thresholds.pixel:.4g} "
                     f"({thresholds.source}{few})")
    lines.append(f"model file: {model_file} ({model_file.stat().st_size / 2**20:.1f} MiB)")
    return lines


def _load(args: argparse.Namespace):
    overrides = {"progress": not args.quiet, "batch_size": args.batch_size}
    for option in ("search", "precision"):
        if getattr(args, option):
            overrides[option] = getattr(args, option)
    if args.search_option:
        overrides["search_options"] = _search_options(args)
    return load(args.model, **overrides)


def check_predictions_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is not empty, unless ``overwrite`` and it holds a previous run's scores."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"{out}: not empty (use --overwrite to replace a previous run's predictions)")
    if not (out / "scores.csv").is_file():
        raise ValueError(f"{out}: --overwrite replaces only a previous predictions folder (one with scores.csv)")


def cmd_predict(args: argparse.Namespace) -> None:
    check_predictions_folder(Path(args.out), args.overwrite)
    detector = _load(args)
    if detector.thresholds_ is None:
        log.warning("%s has no thresholds: raw scores only (calibrate with 'tailedcore calibrate')", args.model)
    elif detector.thresholds_.few_images:
        log.warning("%s: %s", args.model, detector.thresholds_.few_images_warning())
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
        print(f"{decision}{record['raw_score']:.6g}\t{record['image']}")
    failed = f", {len(predictions.failures)} unreadable" if predictions.failures else ""
    print(f"{len(predictions.paths)} images scored{failed} -> {args.out}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    if args.validation and args.false_alarm_rate is not None:
        raise UsageError("--false-alarm-rate applies to --normal; --validation takes the F1-max thresholds")
    detector = _load(args)
    if args.false_alarm_rate is not None:
        detector.set_params(false_alarm_rate=args.false_alarm_rate)
    if args.normal:
        thresholds = detector.calibrate(args.normal)
    else:
        thresholds = calibrate_on_validation(detector, args.validation)
        detector.thresholds_ = thresholds
    detector.save(args.out or args.model)
    print(f"image threshold {thresholds.image:.6g}, pixel threshold {thresholds.pixel:.6g} ({thresholds.source}) "
          f"-> {args.out or args.model}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    detector = _load(args)
    evaluation = evaluate(detector, args.data)
    print(write_evaluation(evaluation, Path(args.out)))


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
    from ..bench.benchmark import results_markdown, run_benchmark, run_seeds, summary_markdown

    options = {"resize": args.resize, "crop": args.crop, "batch_size": args.batch_size,
               "coreset_ratio": args.coreset_ratio, "backbone": args.backbone, "weights": args.weights,
               "precision": args.precision or "float32",
               "search_options": _search_options(args)}
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
        if args.profile_stages:
            for method, block in results["methods"].items():
                stages = block["diagnostics"].get("stages", [])
                print(f"\n{method}\n" + stage_table([[s["stage"], s["seconds"], s["peak_rss_mib"]] for s in stages]))


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve

    detector = _load(args)
    if detector.thresholds_ is None:
        log.warning("%s has no thresholds: answers carry raw scores and no decision", args.model)
    elif detector.thresholds_.few_images:
        log.warning("%s: %s", args.model, detector.thresholds_.few_images_warning())
    serve(detector, args.host, args.port, max_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (backbone, exact search) and faiss (approximate search)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


DESCRIPTION = "Anomaly detection for industrial image sets (PatchCore, SoftPatch, TailedCore)"
EPILOG = "Global options go before or after the command. 'tailedcore COMMAND --help' describes each command."


def _add_global_options(parser, suppress: bool) -> None:
    """--debug, --quiet, --threads. Commands take them too, with defaults suppressed so that a value
    given before the command is kept."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--debug", action="store_true", default=default(False), help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", default=default(False), help="no progress bars")
    parser.add_argument("--threads", type=int, default=default(None),
                        help="CPU threads for torch and faiss (default: one per core); fix it to make benchmark "
                             "figures exactly repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailedcore", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"tailedcore {__version__}")
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit a model on a dataset root or image folder")
    fit.add_argument("data", help="MVTec-layout root (all train/good merged) or a folder of images")
    fit.add_argument("--method", choices=sorted(METHODS), default="tailedcore", help="(default tailedcore)")
    fit.add_argument("--out", required=True, help="model file to write (.safetensors)")
    fit.add_argument("--cache", help="folder for feature files: completed batches are kept and reused by a "
                                     "re-run (default: temporary, removed)")
    fit.add_argument("--strict", action="store_true", help="fail on the first unreadable training image")
    fit.add_argument("--profile-stages", action="store_true", help="print wall time and peak RSS of every stage")
    fit.add_argument("--calibration", nargs="+", help="normal images/folders to calibrate thresholds on")
    _add_model_options(fit)
    _add_run_options(fit)
    fit.set_defaults(run=cmd_fit)

    predict = commands.add_parser("predict", help="score images; write scores and heatmap overlays")
    predict.add_argument("model", help="model file")
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
    calibrate.add_argument("--out", help="write the calibrated model here instead")
    _add_run_options(calibrate)
    calibrate.set_defaults(run=cmd_calibrate)

    evaluate_cmd = commands.add_parser("evaluate", help="per-class metrics on an MVTec-layout test split")
    evaluate_cmd.add_argument("model", help="model file")
    evaluate_cmd.add_argument("data", help="MVTec-layout root")
    evaluate_cmd.add_argument("--out", required=True, help="output folder")
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
    bench.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--seeds", nargs="+", type=int, help="build one NLT set per seed from DATA and run each")
    bench.add_argument("--profile", help="NLT profile for --seeds (step-k1, step-k4, pareto)")
    bench.add_argument("--noise", type=float, default=0.1, help="noise for --seeds (default 0.1)")
    bench.add_argument("--keep-injected-in-test", action="store_true", help="leaky protocol for --seeds")
    bench.add_argument("--resume", action="store_true",
                       help="with --seeds, reuse seed-N/results.json when it holds every requested method")
    bench.add_argument("--backbone", default="efficientnet-lite0")
    bench.add_argument("--weights")
    bench.add_argument("--resize", type=int, default=256)
    bench.add_argument("--crop", type=int, default=224)
    bench.add_argument("--coreset-ratio", type=float, default=0.1)
    bench.add_argument("--profile-stages", action="store_true",
                       help="print wall time and peak RSS of every stage of each method")
    bench.add_argument("--max-tail-rows", type=int, help="a joint tail coreset over more patch rows (with views) "
                                                          "than this runs two-round (default: no limit)")
    _add_method_options(bench.add_argument_group("method"))
    _add_run_options(bench)
    bench.set_defaults(run=cmd_benchmark)

    serve_cmd = commands.add_parser("serve", help="HTTP service and web page for one model")
    serve_cmd.add_argument("model", help="model file")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20)")
    serve_cmd.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image area")
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

"""Command line: ``tailedcore [OPTIONS] COMMAND ...``, one command per step of the work.

A thin shell over the Python API: this module builds the parser (the settings'
and methods' options are made from their parameter classes, options.py) and
runs a command (commands.py). Errors are one line on stderr (``--debug`` shows
the traceback); exit codes: 0 success, 1 failure, 2 usage error, 130
interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback

from .. import __version__
from ..methods import METHODS
from ..runtimes import EXPORT_FORMATS
from ..scoring import SERVING_SEARCH
from ..thresholds import describe_search
from .commands import (
    DEMO_SIZES,
    SERVING_MAX_BATCH,
    UsageError,
    cmd_benchmark,
    cmd_calibrate,
    cmd_convert_visa,
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_fit,
    cmd_make_nlt,
    cmd_predict,
    cmd_products,
    cmd_serve,
)
from .options import PROCESS_OPTIONS, SETTING_OPTIONS, add_policy_options, add_setting_options


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception, so that a run cleans up (temporary feature files) as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


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
    """--debug, --quiet and the process-wide settings (--threads). Commands take them too, with defaults
    suppressed so that a value given before the command is kept."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--debug", action="store_true", default=default(False), help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", default=default(False), help="no progress bars")
    for option in PROCESS_OPTIONS:
        option.add_to(parser, absent=suppress)


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
    add_setting_options(fit.add_argument_group("settings"),
                        defaults={"--search": f"{describe_search(SERVING_SEARCH)}, kept in the model"})
    add_policy_options(fit.add_argument_group("method"))
    fit.set_defaults(run=cmd_fit)

    predict = commands.add_parser("predict", help="score images; write scores and heatmap overlays")
    predict.add_argument("model", help="model file or export folder")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="output folder (new or empty)")
    predict.add_argument("--overwrite", action="store_true", help="replace a previous run's output folder")
    predict.add_argument("--strict", action="store_true",
                         help="fail on the first unreadable image or image upscaled more than 4x")
    predict.add_argument("--min-area", type=int, default=16, help="smallest defect blob kept in masks, in pixels")
    add_setting_options(predict.add_argument_group("settings"), ("run",), model_default=True)
    predict.set_defaults(run=cmd_predict)

    calibrate = commands.add_parser("calibrate", help="set the model's thresholds from normal or labeled images")
    calibrate.add_argument("model", help="model file (rewritten unless --out)")
    source = calibrate.add_mutually_exclusive_group(required=True)
    source.add_argument("--normal", nargs="+", help="normal images or folders: threshold at the false-alarm rate")
    source.add_argument("--validation", help="MVTec-layout root with labeled test splits: F1-max thresholds")
    calibrate.add_argument("--out", help="write the calibrated model here instead (a new file unless --overwrite)")
    calibrate.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    add_setting_options(calibrate.add_argument_group("settings (--false-alarm-rate, --calibration-scope: with "
                                                     "--normal)"), ("run",), model_default=True)
    for option in SETTING_OPTIONS:
        if option.target in ("calibration__false_alarm_rate", "calibration__scope"):
            option.add_to(calibrate, model_default=True)
    calibrate.set_defaults(run=cmd_calibrate)

    evaluate_cmd = commands.add_parser("evaluate", help="per-class metrics on an MVTec-layout test split")
    evaluate_cmd.add_argument("model", help="model file or export folder")
    evaluate_cmd.add_argument("data", help="MVTec-layout root")
    evaluate_cmd.add_argument("--out", required=True, help="output folder (new or empty)")
    evaluate_cmd.add_argument("--overwrite", action="store_true", help="replace a previous evaluation's folder")
    add_setting_options(evaluate_cmd.add_argument_group("settings"), ("run",), model_default=True)
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
    bench.add_argument("--stage-times", action="store_true",
                       help="print wall time and peak RSS of every stage of each method")
    add_setting_options(bench.add_argument_group("settings"),
                        skip=("--seed", "--calibration-share", "--false-alarm-rate", "--calibration-scope",
                              "--runtime"),
                        defaults={"--search": "exact, the benchmark protocol"})
    add_policy_options(bench.add_argument_group("method"))
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
    add_setting_options(serve_cmd.add_argument_group("settings"), ("run",), model_default=True)
    serve_cmd.set_defaults(run=cmd_serve)

    demo = commands.add_parser("demo", help="fit all three methods on a small noisy long-tail set")
    demo.add_argument("--data", help="MVTec-layout root (default: generated textures)")
    demo.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    for option in SETTING_OPTIONS:
        if option.target in DEMO_SIZES:
            option.add_to(demo, default_text=f"{DEMO_SIZES[option.target]}, reduced for speed")
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
    for option in PROCESS_OPTIONS:
        problem = option.problem(getattr(args, option.dest))
        if problem:
            parser.error(f"{option.flag} {getattr(args, option.dest)}: {problem}")
    if args.threads is not None:
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

"""Runtimes for the features stage: torch (the model's own), or an exported graph run by ONNX Runtime
or OpenVINO. Memory bank, scoring and thresholds are the same arrays whatever ran the network.

An export is a folder holding the backbone and the patch aggregation as one graph, (B, 3, crop,
crop) standardised float32 -> (B, H*W, D) float32 patch features for any batch size
(``features.onnx``, or OpenVINO's ``features.xml`` + ``features.bin``), beside the model file
(``model.safetensors``: memory bank, thresholds, parameters) and ``export.json`` (format, input
size). Both graph formats are data: loading an export runs no code from it, and builds no torch
backbone.

Lower precision is each runtime's own and never on by default (``GRAPH_PRECISIONS``): OpenVINO
runs the float32 graph in bfloat16 when asked; an ONNX export can also hold an int8 graph
(``features-int8.onnx``), quantised by ONNX Runtime and calibrated on normal images at export.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._io import atomic_write_text, staged_directory

RUNTIMES = ("torch", "onnx", "openvino")
EXPORT_FORMATS = ("onnx", "openvino")
GRAPH_FILES = {"onnx": "features.onnx", "openvino": "features.xml"}
INT8_GRAPH = "features-int8.onnx"
GRAPH_PRECISIONS = {"onnx": ("float32", "int8"), "openvino": ("float32", "bfloat16")}
EXPORT_INFO = "export.json"
MODEL_FILE = "model.safetensors"
log = logging.getLogger(__name__)
EXTRAS = {"onnx": "pip install 'tailedcore[onnx]'", "openvino": "pip install 'tailedcore[openvino]'"}


class FeatureGraph(nn.Module):
    """The backbone and the patch aggregation of a FeatureExtractor as one module (float32)."""

    def __init__(self, extractor):
        super().__init__()
        self.backbone, self.aggregator = extractor.backbone, extractor.aggregator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aggregator(*self.backbone(images))


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_INFO).is_file()


def export(detector, out: str | os.PathLike, fmt: str, overwrite: bool = False,
           int8_calibration: Sequence[Path] = ()) -> Path:
    """Write the export folder ``out`` of a fitted detector in format ``fmt`` (onnx or openvino).

    ``int8_calibration``: normal image files; with them an onnx export also holds the int8 graph,
    its activation ranges calibrated on these images.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format '{fmt}': choose from {', '.join(EXPORT_FORMATS)}")
    if int8_calibration and fmt != "onnx":
        raise ValueError(f"int8 calibration images: only the onnx format has an int8 graph, not {fmt}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"{out}: exists and is not empty (--overwrite replaces it)")
    extractor = detector.extractor
    graph = FeatureGraph(extractor).eval()
    example = torch.zeros(1, 3, detector.crop, detector.crop)
    with staged_directory(out) as folder, warnings.catch_warnings():
        # Tracing warns that shapes become constants: the graph is for the model's fixed input size.
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            _require("onnx", "onnxruntime")
            torch.onnx.export(graph, (example,), str(folder / GRAPH_FILES["onnx"]), input_names=["images"],
                              output_names=["patches"], dynamic_axes={"images": {0: "batch"}, "patches": {0: "batch"}},
                              dynamo=False)
            if int8_calibration:
                _quantise_int8(folder / GRAPH_FILES["onnx"], folder / INT8_GRAPH, extractor, int8_calibration)
        else:
            ov = _require("openvino", "openvino")
            model = ov.convert_model(graph, example_input=example, input=[(-1, 3, detector.crop, detector.crop)])
            ov.save_model(model, str(folder / GRAPH_FILES["openvino"]), compress_to_fp16=False)
        detector.save(folder / MODEL_FILE)
        info = {"format": fmt, "input": [3, detector.crop, detector.crop], "feature_dim": extractor.feature_dim,
                "grid": list(extractor.grid_shape), "graph": GRAPH_FILES[fmt], "model": MODEL_FILE,
                "int8_graph": INT8_GRAPH if int8_calibration else None,
                "int8_calibration_images": len(int8_calibration)}
        info["sha256"] = {path.name: file_sha256(path) for path in sorted(folder.iterdir())}
        atomic_write_text(folder / EXPORT_INFO, json.dumps(info, indent=1) + "\n")
    return out


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_export(folder: str | os.PathLike) -> dict:
    """The export's info after checking every file it lists against its SHA-256 (ValueError naming a
    damaged or missing file). An export written before digests were kept loads with a warning."""
    folder = Path(folder)
    info = export_info(folder)
    digests = info.get("sha256")
    if digests is None:
        log.warning("%s: an export without file digests (an older tailedcore): its graph is not checked", folder)
        return info
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path}: missing from the export (export the model again)")
        if file_sha256(path) != digest:
            raise ValueError(f"{path}: damaged (its SHA-256 differs from the one in {EXPORT_INFO}); "
                             "export the model again")
    return info


def export_info(folder: str | os.PathLike) -> dict:
    path = Path(folder) / EXPORT_INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a tailedcore export ({error})") from error
    if info.get("format") not in EXPORT_FORMATS:
        raise ValueError(f"{path}: unknown export format {info.get('format')!r}")
    return info


def _require(module: str, runtime: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RuntimeError(f"runtime {runtime} needs {module}: {EXTRAS[runtime]}") from error


def _quantise_int8(graph: Path, out: Path, extractor, images: Sequence[Path]) -> None:
    """ONNX Runtime static quantisation of ``graph`` into ``out``: int8 weights per output channel,
    uint8 activations whose ranges are those of the (standardised) ``images``, as QDQ pairs."""
    quantization = _require("onnxruntime.quantization", "onnx")
    shape_inference = _require("onnxruntime.quantization.shape_inference", "onnx")
    batches = []
    for start in range(0, len(images), extractor.batch_size):
        loaded = extractor.load(images[start : start + extractor.batch_size])
        unreadable = next((item for item in loaded if isinstance(item, Exception)), None)
        if unreadable is not None:
            raise unreadable
        batches.append({"images": extractor.standardise(loaded).numpy()})

    class Batches(quantization.CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(batches)

        def get_next(self):
            return next(self.remaining, None)

    prepared = out.with_suffix(".prepared.onnx")
    shape_inference.quant_pre_process(str(graph), str(prepared))
    quantization.quantize_static(str(prepared), str(out), Batches(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    prepared.unlink()


class GraphFeatures:
    """The exported graph of ``folder`` run by ``runtime``: (B, 3, crop, crop) float32 -> (B, H*W, D) float32.

    The runtime uses as many threads as torch (``--threads``); ``precision`` is one of the runtime's
    ``GRAPH_PRECISIONS``.
    """

    def __init__(self, folder: str | os.PathLike, runtime: str, precision: str = "float32"):
        info = export_info(folder)
        if runtime not in GRAPH_PRECISIONS:
            raise ValueError(f"runtime '{runtime}': choose from {', '.join(GRAPH_PRECISIONS)}")
        if precision not in GRAPH_PRECISIONS[runtime]:
            raise ValueError(f"precision='{precision}': runtime {runtime} offers "
                             f"{' or '.join(GRAPH_PRECISIONS[runtime])}")
        graph = Path(folder) / (INT8_GRAPH if precision == "int8" else GRAPH_FILES[runtime])
        if precision == "int8" and not graph.is_file():
            raise ValueError(f"{folder}: holds no int8 graph (export with --int8-calibration IMAGES)")
        if not graph.is_file():
            raise ValueError(f"{folder}: holds a {info['format']} export, not a {runtime} graph "
                             f"(use --runtime {info['format']}, or export with --format {runtime})")
        if runtime == "onnx":
            ort = _require("onnxruntime", "onnx")
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            self._run = lambda images: session.run(None, {"images": images})[0]
        elif runtime == "openvino":
            ov = _require("openvino", "openvino")
            core = ov.Core()
            if precision == "bfloat16":
                capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
                if "BF16" not in capabilities:
                    log.warning("OpenVINO has no bfloat16 on this CPU (it offers %s): the graph runs in float32",
                                ", ".join(capabilities))
            hint = {"float32": "f32", "bfloat16": "bf16"}[precision]
            compiled = core.compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                              "INFERENCE_NUM_THREADS": torch.get_num_threads()})
            self._run = lambda images: compiled(images)[0]

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(images.numpy(), dtype=np.float32)), dtype=np.float32)

"""Runtimes for the features stage: torch (the model's own), or an exported graph run by ONNX Runtime
or OpenVINO. Memory bank, scoring and thresholds are the same arrays whatever ran the network.

An export is a folder holding the backbone and the patch aggregation as one graph, (B, 3, crop,
crop) standardised float32 -> (B, H*W, D) float32 patch features for any batch size
(``features.onnx``, or OpenVINO's ``features.xml`` + ``features.bin``), beside the model file
(``model.safetensors``: memory bank, thresholds, parameters) and ``export.json`` (format, input
size). Both graph formats are data: loading an export runs no code from it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._io import atomic_write_text, staged_directory

RUNTIMES = ("torch", "onnx", "openvino")
EXPORT_FORMATS = ("onnx", "openvino")
GRAPH_FILES = {"onnx": "features.onnx", "openvino": "features.xml"}
EXPORT_INFO = "export.json"
MODEL_FILE = "model.safetensors"
EXTRAS = {"onnx": "pip install 'tailedcore[onnx]'", "openvino": "pip install 'tailedcore[openvino]'"}


class FeatureGraph(nn.Module):
    """The backbone and the patch aggregation of a FeatureExtractor as one module (float32)."""

    def __init__(self, extractor):
        super().__init__()
        self.backbone, self.aggregator = extractor.backbone, extractor.aggregator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        map8, map16 = self.backbone(images)
        return self.aggregator(map8, map16)


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_INFO).is_file()


def export(detector, out: str | os.PathLike, fmt: str, overwrite: bool = False) -> Path:
    """Write the export folder ``out`` of a fitted detector in format ``fmt`` (onnx or openvino)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format '{fmt}': choose from {', '.join(EXPORT_FORMATS)}")
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
        else:
            ov = _require("openvino", "openvino")
            model = ov.convert_model(graph, example_input=example, input=[(-1, 3, detector.crop, detector.crop)])
            ov.save_model(model, str(folder / GRAPH_FILES["openvino"]), compress_to_fp16=False)
        detector.save(folder / MODEL_FILE)
        info = {"format": fmt, "input": [3, detector.crop, detector.crop], "feature_dim": extractor.feature_dim,
                "grid": list(extractor.grid_shape), "graph": GRAPH_FILES[fmt], "model": MODEL_FILE}
        atomic_write_text(folder / EXPORT_INFO, json.dumps(info, indent=1) + "\n")
    return out


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
        return __import__(module)
    except ImportError as error:
        raise RuntimeError(f"runtime {runtime} needs {module}: {EXTRAS[runtime]}") from error


class GraphFeatures:
    """The exported graph of ``folder`` run by ``runtime``: (B, 3, crop, crop) float32 -> (B, H*W, D) float32.

    The runtime uses as many threads as torch (``--threads``), in float32.
    """

    def __init__(self, folder: str | os.PathLike, runtime: str):
        info = export_info(folder)
        graph = Path(folder) / GRAPH_FILES[runtime]
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
            compiled = ov.Core().compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                   "INFERENCE_NUM_THREADS": torch.get_num_threads()})
            self._run = lambda images: compiled(images)[0]
        else:
            raise ValueError(f"runtime '{runtime}': choose from {', '.join(RUNTIMES)}")

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(images.numpy(), dtype=np.float32)), dtype=np.float32)

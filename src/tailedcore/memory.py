"""The memory bank and the model file that carries it.

A model file is one safetensors file: the arrays (memory features, optional
weights) plus a JSON header entry with the format name, format version,
detector config and a SHA-256 of config and arrays. Loading parses only that JSON
and raw arrays, so it never executes code, and a file whose arrays or header
were edited is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ._io import atomic_write_file

FORMAT_NAME = "tailedcore-model"
FORMAT_VERSION = 4
# Version 1 held the policy as flat parameters, version 2 had no products, version 3 held the settings
# as flat parameters; model_file.py reads them all still.
READABLE_VERSIONS = (1, 2, 3, 4)


class ModelFileError(ValueError):
    """A file is not a valid tailedcore model."""


@dataclass
class MemoryBank:
    """features: (k, D) float32; weights: (k,) float32 or None; info: JSON-able summary."""

    features: np.ndarray
    weights: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        if self.features.ndim != 2:
            raise ValueError(f"memory features: expected (k, D), got shape {self.features.shape}")
        if self.weights is not None:
            self.weights = np.ascontiguousarray(self.weights, dtype=np.float32)
            if self.weights.shape != (len(self.features),):
                raise ValueError("memory weights: expected one weight per memory feature")

    def __len__(self) -> int:
        return len(self.features)


def _digest(arrays: dict[str, np.ndarray], config: dict) -> str:
    sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        sha.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        sha.update(memoryview(array).cast("B"))  # no copy of a memory bank that may be GBs
    return sha.hexdigest()


def write_model(path: str | os.PathLike, arrays: dict[str, np.ndarray], config: dict) -> None:
    """Write arrays + config atomically (temp file, then rename)."""
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config,
              "sha256": _digest(arrays, config)}
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write_file(Path(path), lambda tmp: save_file(contiguous, tmp, metadata={"tailedcore": json.dumps(header)}))


def _cut_short(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file but ends before the header or the arrays it declares."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return False
        header_size = int.from_bytes(prefix, "little")
        if header_size > 100_000_000:  # not a safetensors header length at all
            return False
        if size < 8 + header_size:
            return True
        try:
            header = json.loads(handle.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
    ends = [entry["data_offsets"][1] for entry in header.values()
            if isinstance(entry, dict) and "data_offsets" in entry]
    return size < 8 + header_size + max(ends, default=0)


def read_model(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify a model file -> (arrays, config). Raises ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        if _cut_short(path):
            raise ModelFileError(f"{path}: damaged or truncated (shorter than its header says; "
                                 "copy or write it again)") from error
        raise ModelFileError(f"{path}: not a tailedcore model file ({error})") from error
    try:
        header = json.loads(metadata["tailedcore"])
    except (KeyError, json.JSONDecodeError, TypeError) as error:
        raise ModelFileError(f"{path}: not a tailedcore model file (no valid tailedcore header)") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a tailedcore model file")
    if header.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(f"{path}: model format version {header.get('format_version')} is not supported "
                             f"(expected one of {', '.join(map(str, READABLE_VERSIONS))})")
    if not isinstance(header.get("config"), dict):
        raise ModelFileError(f"{path}: model header has no config")
    if header.get("sha256") != _digest(arrays, header["config"]):
        raise ModelFileError(f"{path}: checksum mismatch (file was modified or is damaged)")
    return arrays, header["config"]

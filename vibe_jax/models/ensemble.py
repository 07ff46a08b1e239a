"""Ensembles of small binary classifiers with stacked parameters (RAB, Cert-SSBD).

Every member is the same flax module; their parameters are stacked along a leading
axis of size N_m, and every per-member computation is `jax.vmap` over that axis
(the public RAB / Cert-SSB code trains and queries its members one after another).
Member m draws its randomness from `member_key(base, m)` = fold_in(base, m), so a
member's noise does not depend on how many members there are or how they are
split over devices.

`SmoothedEnsemble` is the trained classifier a defense returns: its `apply` gives
log of the members' mean class probabilities at x + sigma * z_m, with z_m each
member's fixed test-time noise (RAB's `fix_pert`), so the ordinary evaluators (ACC,
ASR) read it as any classifier; `probs` with a per-row sigma serves certification.
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vibe_jax.models.layers import max_pool2

__all__ = ["PatchConv", "BinaryCNN", "BinaryMLP", "member_model", "member_key", "init_members",
           "member_probs", "SmoothedEnsemble"]


class PatchConv(nn.Module):
  """A 'SAME' convolution written as image patches times a dense kernel.

  Why: `jax.vmap` over the parameters of `nn.Conv` becomes a grouped convolution
  (one group per member), which XLA's CPU backend runs about 300x slower than the
  same work as matrix products (measured: 22 s against 0.07 s for a step of 64
  members on 8x8 digits). Patches do not depend on the parameters, so under vmap
  they are one ordinary convolution, and the kernel becomes a batched matmul.

  Attributes:
    features: output channels.
    kernel: side of the square window.
  """

  features: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, (h, w) = self.kernel, x.shape[1:3]
    lo = (k - 1) // 2
    padded = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
    # Shifted slices, not lax.conv_general_dilated_patches: on the CPU that is itself
    # a slow convolution (0.18 s forward, 1.1 s backward for 8,192 8x8 images).
    patches = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(k)
                               for j in range(k)], axis=-1)
    return nn.Dense(self.features)(patches)


class BinaryCNN(nn.Module):
  """Two conv-ReLU-max-pool stages, a hidden dense layer and one logit: the public
  code's MNIST model (`MnistCnnModel`: 16 and 32 channels, 512 hidden units, one
  sigmoid output) with 3x3 'SAME' convolutions so 8 px digits fit, and by default a
  narrower hidden layer, so that many members train on a CPU. Inputs larger than
  32 px are average-pooled to 8x8 after the convolutions (224 px tasks).

  Attributes:
    widths: channels of the two stages.
    hidden: units of the hidden dense layer.
  """

  widths: tuple[int, int] = (16, 32)
  hidden: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.widths:
      x = nn.relu(PatchConv(width)(x))
      if x.shape[1] >= 2 and x.shape[1] % 2 == 0:
        x = max_pool2(x)
    if x.shape[1] > 8 and x.shape[1] % 8 == 0:
      window = x.shape[1] // 8
      x = nn.avg_pool(x, (window, window), strides=(window, window))
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(len(x), -1)))
    return nn.Dense(1)(x)[:, 0]


class BinaryMLP(nn.Module):
  """One hidden layer and one logit: the member model on feature vectors."""

  hidden: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(1)(nn.relu(nn.Dense(self.hidden)(x)))[:, 0]


def member_model(input_ndim: int, hidden: int = 64) -> nn.Module:
  """The member module for inputs of `input_ndim` dimensions per batch (4: images,
  2: feature vectors)."""
  return BinaryCNN(hidden=hidden) if input_ndim == 4 else BinaryMLP(hidden=hidden)


def member_key(base: jax.Array, member: jax.Array | int) -> jax.Array:
  """Member `member`'s own key."""
  return jax.random.fold_in(base, member)


def init_members(model: nn.Module, base: jax.Array, members: int, sample: jax.Array) -> Any:
  """Stacked parameters of `members` independently initialised members (leading
  axis N_m), member m from fold_in(fold_in(base, m), 0)."""
  keys = jax.vmap(lambda m: jax.random.fold_in(member_key(base, m), 0))(jnp.arange(members))
  return jax.vmap(lambda k: model.init(k, sample)["params"])(keys)


def member_probs(model: nn.Module, params: Any, x: jax.Array, noise: jax.Array
                 ) -> jax.Array:
  """(N_m, B, 2) class probabilities [1 - s, s] of every member, member m seeing
  x + noise[m] (noise (N_m, B, ...) or (N_m, 1, ...) to share it over rows)."""
  def one(p, eps):
    s = jax.nn.sigmoid(model.apply({"params": p}, x + eps))
    return jnp.stack([1.0 - s, s], axis=-1)
  return jax.vmap(one)(params, noise)


@dataclasses.dataclass(frozen=True)
class SmoothedEnsemble:
  """The smoothed classifier of a trained ensemble, duck-typed as a flax module for
  `train.Inference` (`apply(variables, x[, method="embed"])`).

  Variables: {"members": stacked member parameters, "noise": (N_m, ...) fixed unit
  Gaussian test-time noise per member, "sigma": the scale of that noise}. Inputs are
  in [0, 1] pixel units (images) or as stored (features): the trigger's l2 size is
  measured there.

  Attributes:
    model: the member module.
    chunk: members evaluated at once (bounds memory for large ensembles).
  """

  model: nn.Module
  chunk: int = 64

  def probs(self, variables: dict[str, Any], x: jax.Array,
            sigma: Optional[jax.Array] = None) -> jax.Array:
    """(B, 2) mean member probabilities at x + sigma * z_m; `sigma` a scalar or (B,)
    per row, default the variables' own."""
    sigma = variables["sigma"] if sigma is None else sigma
    scale = jnp.reshape(jnp.asarray(sigma, x.dtype), (1, -1) + (1,) * (x.ndim - 1))
    noise, params = variables["noise"], variables["members"]
    members = noise.shape[0]
    chunk = min(self.chunk, members)
    total = jnp.zeros((x.shape[0], 2), jnp.float32)
    # Chunks of members in a Python loop: the number of chunks is static and small.
    for start in range(0, members, chunk):
      stop = min(start + chunk, members)
      part = jax.tree_util.tree_map(lambda a: a[start:stop], params)
      eps = noise[start:stop, None] * scale
      total = total + member_probs(self.model, part, x, eps).sum(0)
    return total / members

  def apply(self, variables: dict[str, Any], x: jax.Array, method: Optional[str] = None
            ) -> jax.Array:
    """log of the smoothed probabilities (B, 2), or with method="embed" the
    probabilities themselves (an ensemble has no shared feature space)."""
    p = self.probs(variables, x)
    return p if method == "embed" else jnp.log(jnp.maximum(p, 1e-12))

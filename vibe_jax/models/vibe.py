"""VIBEModel: an optional backbone followed by the VIBE head."""

from typing import Optional

import flax.linen as nn
import jax

from vibe_jax.models.vmf import VIBEHead

__all__ = ["VIBEModel"]


class VIBEModel(nn.Module):
  """Backbone (or none, for precomputed features) plus `VIBEHead`.

  Parameters live under "backbone" and "head"; the optimizer groups them as
  backbone / mu / eta / prior (see `vibe_jax.mstep`).

  Attributes:
    head: the VIBE head.
    backbone: a module mapping inputs to (B, D) features, or None when the inputs
      are already features.
  """

  head: VIBEHead
  backbone: Optional[nn.Module] = None

  def embed(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns the (B, D) features of `x`."""
    if self.backbone is None:
      return x
    return self.backbone(x, train=train)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns log p(l|x), shape (B, K)."""
    return self.head(self.embed(x, train))

  def scores_and_features(self, x: jax.Array, train: bool = False
                          ) -> tuple[jax.Array, jax.Array]:
    """(log p(l|x), features) from one forward pass: the (logits, features) pair the
    peer defenses need (CBD's mutual-information penalty reads the features)."""
    v = self.embed(x, train)
    return self.head(v), v

  def log_joint(
      self, x: jax.Array, y: jax.Array, uniform_p_yl: bool = False, train: bool = False
  ) -> jax.Array:
    """Returns ln p(l|x) + ln p(y|l[,x]), shape (B, K); see `VIBEHead.log_joint`."""
    return self.head.log_joint(self.embed(x, train), y, uniform_p_yl)

  def head_log_joint(
      self, v: jax.Array, y: jax.Array, uniform_p_yl: bool = False
  ) -> jax.Array:
    """`log_joint` of features `v` already computed by `embed` (the streamed E-step
    embeds the training set once, batch by batch)."""
    return self.head.log_joint(v, y, uniform_p_yl)

  def prior(self) -> jax.Array:
    """Returns the learned class prior pi, shape (K,)."""
    return self.head.prior()

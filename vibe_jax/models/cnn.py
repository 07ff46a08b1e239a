"""A small CNN: the benign model the label-consistent attack perturbs against, and a
cheap backbone for tests and CPU runs."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vibe_jax.models import onednn_conv
from vibe_jax.models.layers import BatchNorm

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
  """Three conv-BN-ReLU-pool stages, global average pooling, optional classifier.

  Attributes:
    widths: channels of the three stages.
    num_classes: with a value, a linear classifier on top; None returns features.
  """

  widths: tuple[int, int, int] = (32, 64, 128)
  num_classes: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for width in self.widths:
      x = nn.Conv(width, (3, 3), use_bias=False, conv_general_dilated=onednn_conv.conv)(x)
      even = x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
      x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                    relu_pool=even)(x)  # BatchNorm, ReLU and pooling in one op
      if not even:
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes)(x)
    return x

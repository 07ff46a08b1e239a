"""The interface every self-supervised method implements, its registry, and the
optimizer they share.

A method is a frozen dataclass registered by name (`config.ssl.method`); its
`build(c, backbone, info)` returns an `SSLParts`: the model (with an `embed`
method giving backbone features), `init(rng, sample) -> TrainState`, the pure step
`(state, batch) -> (state, metrics)` on a batch of uint8 images (batch["x"]) with
the step's key (batch["key"]), and `backbone_variables(state)`, what VIBE-SS
starts from.
"""

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import ml_collections
import optax

from vibe_jax.data.sources import DatasetInfo
from vibe_jax.registry import Registry

__all__ = ["SSLParts", "SSLMethod", "register", "build", "names", "lars"]


@dataclasses.dataclass(frozen=True)
class SSLParts:
  """What the pretraining stage needs of a method (see the module docstring)."""

  model: nn.Module
  init: Callable[[jax.Array, jax.Array], Any]
  step: Callable[[Any, dict], tuple[Any, dict]]
  backbone_variables: Callable[[Any], dict]


@dataclasses.dataclass(frozen=True)
class SSLMethod:
  """Base class of the self-supervised methods."""

  name: ClassVar[str] = ""

  def build(self, c: ml_collections.ConfigDict, backbone: nn.Module,
            info: DatasetInfo) -> SSLParts:
    """The method's parts for the settings `c` (config.ssl) on `backbone`."""
    raise NotImplementedError


_REGISTRY: Registry[SSLMethod] = Registry("self-supervised method")
register = _REGISTRY.register
names = _REGISTRY.names
build = _REGISTRY.build


def lars(c: ml_collections.ConfigDict, peak_lr: float) -> optax.GradientTransformation:
  """LARS (trust coefficient 0.02, momentum 0.9) with linear warm-up and cosine decay
  to `c.num_steps`; biases and normalisation parameters are excluded from weight
  decay and from the trust ratio, as in solo-learn."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=c.warmup_steps,
      decay_steps=max(c.num_steps, c.warmup_steps + 1))
  mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
  return optax.lars(schedule, weight_decay=c.weight_decay, weight_decay_mask=mask,
                    trust_coefficient=0.02, trust_ratio_mask=mask, momentum=0.9)

"""SimCLR: NT-Xent between two views, a solo-learn style projector
Linear-BN-ReLU-Linear (2048 hidden, 256 out), LARS at lr x batch / 256."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vibe_jax.data.ssl_augment import two_views
from vibe_jax.models.layers import BatchNorm
from vibe_jax.models.vmf import l2_normalize
from vibe_jax.stages.ssl.base import SSLMethod, SSLParts, lars, register
from vibe_jax.train.state import TrainState

__all__ = ["SimCLR", "SimCLRMethod", "nt_xent", "make_simclr_step", "make_views_step"]


class SimCLR(nn.Module):
  """Backbone plus projector; returns the projections of a batch."""

  backbone: nn.Module
  hidden: int = 2048
  out: int = 256

  def embed(self, x, train: bool = False):
    """Backbone features (what VIBE-SS fine-tunes and the kNN monitor reads)."""
    return self.backbone(x, train=train)

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = self.backbone(x, train=train)
    h = nn.Dense(self.hidden, name="proj_0")(h)
    h = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                  name="proj_bn")(h)
    return nn.Dense(self.out, name="proj_1")(nn.relu(h))


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """SimCLR's loss: each view must pick its partner among the other 2B - 1."""
  z = l2_normalize(jnp.concatenate([z1, z2]))
  n = z1.shape[0]
  sim = z @ z.T / temperature
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return optax.softmax_cross_entropy_with_integer_labels(sim, partner).mean()


def make_views_step(model: SimCLR, temperature: float):
  """The SimCLR update on two given views `(state, (x1, x2)) -> (state, metrics)`:
  the step without its augmentation (the training-step benchmark times it against
  PyTorch on the same views)."""

  def step(state, views):
    x1, x2 = views

    def loss_fn(params):
      z, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                               jnp.concatenate([x1, x2]), train=True,
                               mutable=["batch_stats"])
      n = x1.shape[0]
      return nt_xent(z[:n], z[n:], temperature), updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=stats), {"loss": loss}

  return step


def make_simclr_step(model: SimCLR, info, temperature: float):
  """The pure SimCLR step `(state, batch) -> (state, metrics)` on uint8 batch["x"]."""
  update = make_views_step(model, temperature)

  def step(state, batch):
    return update(state, two_views(batch["key"], batch["x"], info))

  return step


@register("simclr")
@dataclasses.dataclass(frozen=True)
class SimCLRMethod(SSLMethod):
  """SimCLR on `config.ssl` (proj_hidden, proj_dim, temperature, lr, LARS)."""

  def build(self, c, backbone, info) -> SSLParts:
    model = SimCLR(backbone, c.proj_hidden, c.proj_dim)
    tx = lars(c, c.lr * c.batch_size / 256)

    def init(rng, sample):
      v = model.init(rng, sample)
      return TrainState.create_for(params=v["params"], tx=tx, batch_stats=v["batch_stats"])

    backbone_variables = lambda s: {"params": s.params["backbone"],
                                    "batch_stats": s.batch_stats["backbone"]}
    return SSLParts(model, init, make_simclr_step(model, info, c.temperature),
                    backbone_variables)

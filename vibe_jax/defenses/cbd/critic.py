"""CBD's mutual-information critic: a WGAN-style estimate of the dependence between
the confounder model's features r and the clean model's features z.

  MI(r, z) ~ E_p(r,z)[T(r, z)] - E_p(r)p(z)[T(r, z')],

T a two-layer MLP on concat(r, z) (hidden size = the feature size, leaky ReLU,
dropout 0.2 before each layer, as `zaixizhang/CBD:utils/util.py`), z' the batch's z
shuffled. The critic maximises the estimate; after every update each weight matrix
is divided by its spectral norm (the Lipschitz constraint of a WGAN critic), which
keeps the estimate bounded. The reference divides every parameter, biases included,
by a norm from 5 power iterations; we divide the weight matrices only, by their
exact largest singular value (power iterations underestimate it, which would leave
norms above 1).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Critic", "mutual_information", "spectral_normalize"]


class Critic(nn.Module):
  """T(r, z): a score per pair, (B,)."""

  hidden: int
  dropout: float = 0.2

  @nn.compact
  def __call__(self, r: jax.Array, z: jax.Array, train: bool = False) -> jax.Array:
    h = jnp.concatenate([r, z], axis=-1)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.leaky_relu(nn.Dense(self.hidden, name="hidden")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(1, name="out")(h)[:, 0]


def mutual_information(critic: Critic, params: Any, r: jax.Array, z: jax.Array,
                       key: jax.Array, train: bool = False) -> jax.Array:
  """The critic's estimate on a batch: mean T(r, z) - mean T(r, z shuffled by `key`)."""
  shuffle_key, joint_key, marginal_key = jax.random.split(key, 3)
  shuffled = z[jax.random.permutation(shuffle_key, z.shape[0])]
  joint = critic.apply({"params": params}, r, z, train, rngs={"dropout": joint_key})
  marginal = critic.apply({"params": params}, r, shuffled, train,
                          rngs={"dropout": marginal_key})
  return jnp.mean(joint) - jnp.mean(marginal)


def spectral_normalize(params: Any) -> Any:
  """Each weight matrix divided by its largest singular value (exact, from an SVD:
  the critic's matrices are small, and power iterations underestimate it)."""
  return jax.tree_util.tree_map(
      lambda w: w / jnp.maximum(jnp.linalg.norm(w, ord=2), 1e-12) if w.ndim == 2 else w,
      params)

"""The training step of a smoothed ensemble: all N_m members in one vmapped step.

`make_step(model, settings, base)` returns the pure step `(state, batch) ->
(state, metrics)` of `train.fit`. `state.params` are the stacked member parameters
(leading axis N_m), `state.extra["sigma"]` the per-example sigma store (N,). One
step:

1. Cert-SSBD only (`sigma_mode="sample_specific"`): the batch's sigma_i are read
   from the store, raised `sigma_iters` times by the storage-update rule on the
   ensemble's smoothed probabilities at x + sigma_i * eps (fresh eps per member and
   iteration), and written back (`vibe_jax.certify.sigma_step`, or with
   `gradient="full"` the gradient through the reparameterised noise).
2. Every member m takes one Adam step on the binary cross-entropy of its own noisy
   batch x + sigma_i * eps_m. The members' losses are summed, so each member's
   gradient is its own loss's (the members share no parameter), and Adam is
   element-wise, so one optax Adam over the stacked tree is N_m independent ones.

Noise: "fixed" draws eps_{m,i} once per (member, example), from (member key,
example index), as RAB's `SmoothedDataset` does; "fresh" draws new noise every step,
as Cert-SSB's `get_sigma` does. Member m's randomness comes from fold_in(base, m)
(and the step's key), so it does not depend on N_m or the device count.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vibe_jax import certify
from vibe_jax.models.ensemble import member_key, member_probs

__all__ = ["StepSettings", "training_noise", "update_sigma", "make_step"]

# fold_in tags that keep each use of a member's key apart.
_FIXED, _FRESH, _SIGMA = 2, 1, 3


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What one ensemble step needs from `config.cert`."""

  members: int
  sample_specific: bool
  noise: str  # "fixed" | "fresh"
  sigma_lr: float
  sigma_iters: int
  gradient: str  # "reference" | "full"


def _per_member(key: jax.Array, tag: int, members: int, shape: tuple) -> jax.Array:
  """(N_m, *shape) unit Gaussians, member m's from fold_in(fold_in(key, tag), m)."""
  tagged = jax.random.fold_in(key, tag)
  return jax.vmap(lambda m: jax.random.normal(jax.random.fold_in(tagged, m), shape))(
      jnp.arange(members))


def training_noise(base: jax.Array, step_key: jax.Array, index: jax.Array, shape: tuple,
                   members: int, noise: str) -> jax.Array:
  """(N_m, B, ...) unit Gaussian noise of every member for the batch's rows: "fixed"
  from (member key, example index), "fresh" from (step key, member)."""
  if noise == "fixed":
    def one(m):
      k = jax.random.fold_in(member_key(base, m), _FIXED)
      return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), shape[1:]))(index)
    return jax.vmap(one)(jnp.arange(members))
  return _per_member(step_key, _FRESH, members, shape)


def _rows(sigma: jax.Array, ndim: int) -> jax.Array:
  return sigma.reshape((-1,) + (1,) * (ndim - 1))


def update_sigma(model: nn.Module, params: Any, x: jax.Array, sigma: jax.Array,
                 step_key: jax.Array, settings: StepSettings) -> jax.Array:
  """sigma of the batch's rows after `settings.sigma_iters` storage updates on the
  ensemble's smoothed probabilities (mean over members) at x + sigma * eps."""
  for it in range(settings.sigma_iters):
    eps = _per_member(jax.random.fold_in(step_key, it), _SIGMA, settings.members, x.shape)

    def probs_at(s, eps=eps):
      return member_probs(model, params, x, eps * _rows(s, x.ndim)[None]).mean(0)

    if settings.gradient == "full":
      sigma = sigma + settings.sigma_lr * certify.full_sigma_gradient(probs_at, sigma)
    else:
      sigma = certify.sigma_step(sigma, probs_at(sigma), settings.sigma_lr)
  return jax.lax.stop_gradient(sigma)


def make_step(model: nn.Module, settings: StepSettings, base: jax.Array
              ) -> Callable[[Any, dict], tuple[Any, dict]]:
  """The pure ensemble step; batch["x"] in [0, 1] pixel units (or features),
  batch["y"] in {0, 1}, batch["index"] the rows' example indices."""
  def step(state, batch):
    x, y, index = batch["x"], batch["y"].astype(jnp.float32), batch["index"]
    store = state.extra["sigma"]
    sigma = store[index]
    if settings.sample_specific:
      sigma = update_sigma(model, state.params, x, sigma, batch["key"], settings)
      store = store.at[index].set(sigma)
    eps = training_noise(base, batch["key"], index, x.shape, settings.members, settings.noise)
    eps = eps * _rows(sigma, x.ndim)[None]

    def loss_fn(params):
      logits = jax.vmap(lambda p, e: model.apply({"params": p}, x + e))(params, eps)
      per_member = optax.sigmoid_binary_cross_entropy(logits, y[None]).mean(1)
      return per_member.sum(), (per_member, logits)

    grads, (per_member, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads).replace(extra={**state.extra, "sigma": store})
    metrics = {"loss": per_member.mean(), "accuracy": jnp.mean((logits > 0) == (y[None] > 0.5)),
               "sigma_mean": jnp.mean(store)}
    return state, metrics

  return step

"""The M-step: loss, the grouped SGD optimizer and the pure training steps.

Parameter groups (spec 5.2): "backbone" (everything under params["backbone"]),
"mu", "eta" and "prior" (rho) of the head. Each group has its own learning rate;
momentum and coupled L2 weight decay apply to every group, as in torch SGD. A group
marked frozen gets `optax.set_to_zero()` and never moves, not even by weight decay.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

__all__ = [
    "GROUPS",
    "param_groups",
    "make_optimizer",
    "vibe_loss",
    "make_vibe_step",
    "make_baseline_step",
    "apply_in_training",
]

GROUPS = ("backbone", "mu", "eta", "prior")
_HEAD_GROUP = {"mu": "mu", "eta": "eta", "rho": "prior"}


def param_groups(params: Any) -> Any:
  """Labels every leaf of `params` with its group name (see GROUPS)."""

  def label(path, _):
    keys = [getattr(p, "key", None) for p in path]
    if keys and keys[0] == "head":
      return _HEAD_GROUP[keys[-1]]
    return "backbone"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    learning_rates: dict[str, float],
    *,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    frozen: tuple[str, ...] = (),
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """Grouped SGD equal to torch.optim.SGD with one param group per GROUPS entry.

  torch's coupled L2 (g <- g + wd p) before momentum (buf <- m buf + g, with the
  first buffer = g) is optax's add_decayed_weights then sgd(momentum) with a
  zero-initialised trace.

  Args:
    learning_rates: a learning rate per group name.
    momentum: heavy-ball momentum.
    weight_decay: coupled L2 coefficient.
    frozen: group names that must not move.
    nesterov: Nesterov momentum (torch's `nesterov=True`; ABL and CBD use it).

  Returns:
    An optax transformation over the params pytree.
  """
  unknown = set(frozen) - set(GROUPS)
  if unknown:
    raise ValueError(f"unknown frozen groups {sorted(unknown)}; groups are {GROUPS}")
  transforms = {}
  for group in GROUPS:
    if group in frozen:
      transforms[group] = optax.set_to_zero()
      continue
    if group not in learning_rates:
      raise ValueError(f"no learning rate for parameter group '{group}'")
    transforms[group] = optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rates[group], momentum=momentum or None,
                  nesterov=bool(nesterov and momentum)),
    )
  return optax.multi_transform(transforms, param_groups)


def vibe_loss(log_joint: jax.Array, pseudo_labels: jax.Array) -> jax.Array:
  """-mean_b [ln p(l_b|x_b) + ln p(y_b|l_b[,x_b])] at the pseudo-labels (spec 5.1)."""
  picked = jnp.take_along_axis(log_joint, pseudo_labels[:, None], axis=1)
  return -jnp.mean(picked)


def apply_in_training(model: nn.Module, state, params: Any, method: str, *args):
  """Runs `model.<method>` in training mode; returns (output, new BatchNorm
  statistics) (the statistics unchanged without BatchNorm)."""
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
    out, updates = model.apply(
        variables, *args, train=True, method=method, mutable=["batch_stats"]
    )
    return out, updates["batch_stats"]
  return model.apply(variables, *args, train=True, method=method), state.batch_stats


def make_vibe_step(model: nn.Module) -> Callable[[Any, dict], tuple[Any, dict]]:
  """Returns the pure VIBE M-step `(state, batch) -> (state, metrics)`.

  `state` is a `vibe_jax.train.TrainState` (its `tx` is the optimizer) whose
  `extra["pseudo_labels"]` holds the E-step's labels of every example. `batch`
  holds "x" (inputs or features), "y" (given labels) and "index" (example
  indices); the step gathers the pseudo-labels at `index`.
  """

  def step(state, batch: dict) -> tuple[Any, dict]:
    targets = state.extra["pseudo_labels"][batch["index"]]

    def loss_fn(params):
      log_joint, batch_stats = apply_in_training(
          model, state, params, "log_joint", batch["x"], batch["y"]
      )
      return vibe_loss(log_joint, targets), batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "pseudo_eq_given": jnp.mean(targets == batch["y"])}
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics

  return step


def make_baseline_step(model: nn.Module,
                       objective: Callable[[jax.Array], jax.Array] | None = None
                       ) -> Callable[[Any, dict], tuple[Any, dict]]:
  """Returns the no-defense step: cross-entropy of p(l|x) on the given labels.

  `objective` maps the batch's mean cross-entropy to the loss that is minimised
  (ABL: flooding, or its negation for gradient ascent); the metrics then hold
  both "loss" and "ce"."""

  def step(state, batch: dict) -> tuple[Any, dict]:
    def loss_fn(params):
      log_p, batch_stats = apply_in_training(model, state, params, "__call__", batch["x"])
      ce = vibe_loss(log_p, batch["y"])
      return (ce if objective is None else objective(ce)), (batch_stats, ce)

    (loss, (batch_stats, ce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss} if objective is None else {"loss": loss, "ce": ce}
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics

  return step

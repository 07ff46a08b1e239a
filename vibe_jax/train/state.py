"""The one training state of every stage: flax's TrainState with BatchNorm
statistics and a stage's own arrays.

`apply_gradients` (flax) does the optax update and counts the step; the steps of
`vibe_jax.mstep` and of the self-supervised methods all go through it. `extra`
holds what only one stage carries: VIBE's pseudo-labels, All4One's momentum
encoder and queue. The state is a plain pytree that orbax saves as it is (`tx`
and `apply_fn` are static fields, not saved).
"""

from typing import Any

import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "variables"]


class TrainState(train_state.TrainState):
  """step, params, opt_state (flax) plus `batch_stats` ({} without BatchNorm) and
  `extra` (a dict of a stage's own arrays)."""

  batch_stats: Any = flax.struct.field(default_factory=dict)
  extra: Any = flax.struct.field(default_factory=dict)

  @classmethod
  def create_for(cls, *, params: Any, tx: optax.GradientTransformation,
                 batch_stats: Any = None, extra: Any = None,
                 apply_fn=None) -> "TrainState":
    """Step 0 with `tx` initialised on `params` (step is an int32 array, so that a
    restored state has the same types as a new one)."""
    return cls(step=jnp.zeros((), jnp.int32), apply_fn=apply_fn, params=params, tx=tx,
               opt_state=tx.init(params), batch_stats=batch_stats or {},
               extra=extra or {})


def variables(state: TrainState) -> dict[str, Any]:
  """The model variables of `state`: {"params": ..., ["batch_stats": ...]}."""
  out = {"params": state.params}
  if jax.tree_util.tree_leaves(state.batch_stats):
    out["batch_stats"] = state.batch_stats
  return out

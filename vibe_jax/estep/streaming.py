"""The E-step without log P: its rows recomputed from features in every iteration.

`pseudo_labels_from_features` runs the blocked Sinkhorn (`blocked.sinkhorn`)
with each block of log P computed by the caller's log-joint from its rows of
features and labels, where and when the loop needs it. Memory is O(N x D + K x D)
(features and the head's parameters) instead of O(N x K); the price is one
evaluation of the log-joint over the dataset per iteration (the first iterations
and the labels take one more), against one read of log P.
"""

from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

from vibe_jax.estep import blocked, checks, row_sharding
from vibe_jax.estep.result import REFERENCE_ITERATIONS, PseudoLabels

__all__ = ["pseudo_labels_from_features"]


def pseudo_labels_from_features(
    log_joint_fn: Callable[[jax.Array, jax.Array], jax.Array],
    features: jax.Array,
    labels: jax.Array,
    prior: jax.Array,
    *,
    epsilon: float = 1.0 / 25.0,
    threshold: float = 1e-3,
    max_iterations: int = REFERENCE_ITERATIONS,
    inner_iterations: int = 10,
    reference_iterations: bool = False,
    num_rows: int | None = None,
    block_rows: int | None = None,
) -> PseudoLabels:
  """`pseudo_labels(log_p, prior, solver="blocked")` with log_p never materialised.

  log_p[i] is `log_joint_fn(features[i], labels[i])`, computed a block of rows at
  a time inside every iteration. The result equals `pseudo_labels` with
  `solver="blocked"` on `dataset_log_joint(log_joint_fn, features, labels)` (same
  blocks, same arithmetic) whenever `log_joint_fn` gives the same rows at any
  batch size.

  Validation as `pseudo_labels`, except that the values of log P are never
  checked (it never exists as a whole); the prior's values are, when concrete.

  Sharding: `features` split by rows over a mesh's "data" axis (N divisible by
  its devices: pad with `num_rows`) runs the loop per device on its rows, each
  device computing its own blocks; `labels` and `f` come back split the same way.
  Arrays that `log_joint_fn` closes over (the head's parameters) are replicated.

  Args:
    log_joint_fn: (B, ...) features and (B,) labels -> (B, K) log-joint; called
      with B = `block_rows` (capped at the rows of a device).
    features: (N, ...) inputs of `log_joint_fn`.
    labels: (N,) given labels.
    prior: (K,) class marginal.
    epsilon: as `pseudo_labels`.
    threshold: as `pseudo_labels`.
    max_iterations: as `pseudo_labels`.
    inner_iterations: as `pseudo_labels`.
    reference_iterations: as `pseudo_labels`.
    num_rows: as `pseudo_labels`.
    block_rows: rows per block (default `blocked.default_block_rows(K)`).

  Returns:
    A `PseudoLabels`.

  Raises:
    ValueError: on mismatched rows, bad shapes, dtypes, hyper-parameters or
      (concrete) prior values, as `pseudo_labels`.
  """
  n = features.shape[0]
  if labels.shape[0] != n:
    raise ValueError(f"features has {n} rows but labels has {labels.shape[0]}")
  checks.check_block_rows(block_rows)
  one = jax.eval_shape(log_joint_fn, jax.ShapeDtypeStruct((1,) + features.shape[1:],
                                                          features.dtype),
                       jax.ShapeDtypeStruct((1,) + labels.shape[1:], labels.dtype))
  checks.check_static((n,) + one.shape[1:], one.dtype, prior, epsilon, threshold, max_iterations,
                      inner_iterations)
  checks.check_values(None, prior)
  rows = checks.check_num_rows(num_rows, n)
  k = one.shape[1]
  if reference_iterations:
    max_iterations = inner_iterations = REFERENCE_ITERATIONS

  def log_joint_rows(features_, labels_, size):
    def block(start):
      return log_joint_fn(lax.dynamic_slice_in_dim(features_, start, size, axis=0),
                          lax.dynamic_slice_in_dim(labels_, start, size, axis=0))
    return block

  out = row_sharding.solve_rows(
      log_joint_rows, (features, labels), prior,
      block_rows=block_rows or blocked.default_block_rows(k),
      dtype=jnp.promote_types(one.dtype, jnp.float32), num_rows=rows, epsilon=epsilon,
      threshold=threshold, max_iterations=max_iterations, inner_iterations=inner_iterations)
  return jax.tree.map(lax.stop_gradient, out)

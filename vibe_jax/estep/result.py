"""What every E-step solver returns, and the transport plan it stands for."""

from typing import NamedTuple

import jax

__all__ = ["REFERENCE_ITERATIONS", "PseudoLabels", "transport_log_plan"]

# The reference's `max_iter = 10000` plus one: its loop breaks on `cnt > max_iter`.
REFERENCE_ITERATIONS = 10_001


class PseudoLabels(NamedTuple):
  """Output of `pseudo_labels` (either solver) and `pseudo_labels_from_features`.

  Attributes:
    labels: (N,) int32 row-wise argmax of the transport plan.
    converged: whether the class-marginal error is below the threshold.
    iterations: Sinkhorn iterations run.
    error: final L1 error of the class marginal (rows are exact after each
      iteration).
    f: (N,) sample potential; the log plan is (f_i + g_l + log_p[i, l]) / epsilon
      (ott-jax's convention; -Inf on zero-mass padding rows).
    g: (K,) class potential.
  """

  labels: jax.Array
  converged: jax.Array
  iterations: jax.Array
  error: jax.Array
  f: jax.Array
  g: jax.Array


def transport_log_plan(log_p: jax.Array, result: PseudoLabels, epsilon: float) -> jax.Array:
  """Returns the (N, K) log transport plan of a `pseudo_labels` result.

  Args:
    log_p: the (N, K) log P the result was computed from.
    result: a `PseudoLabels`.
    epsilon: the entropic regularisation it was computed with.

  Returns:
    (N, K) log plan (f_i + g_l + log_p[i, l]) / epsilon.
  """
  return (result.f[:, None] + result.g[None, :] + log_p) / epsilon

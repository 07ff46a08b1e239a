"""Validation of the E-step's inputs, shared by every solver.

Static checks (shapes, dtypes, Python hyper-parameters) run under jit too; value
checks (NaN, Inf, the prior's sum) only on concrete arrays, each as one fused
reduction, and are also available as `checkify` checks (`checked_pseudo_labels`).
"""

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "PRIOR_SUM_TOLERANCE",
    "SOLVERS",
    "check_block_rows",
    "check_num_rows",
    "check_solver",
    "check_static",
    "check_values",
    "is_concrete",
    "log_p_checks",
    "log_p_stats",
    "prior_checks",
    "prior_stats",
]

# How far the prior's sum may be from 1. A float32 softmax over thousands of
# classes sums to 1 far more closely, so this only rejects priors that are wrong.
PRIOR_SUM_TOLERANCE = 1e-4

# The Sinkhorn implementations `pseudo_labels` can run.
SOLVERS = ("ott", "blocked")


def is_concrete(x: Any) -> bool:
  """Whether `x`'s value is known now (not a tracer of jit, vmap, grad, ...)."""
  # Under jit, vmap or grad the arguments are tracers: their values are unknown
  # until the compiled program runs, so nothing can be raised about them.
  return not isinstance(x, jax.core.Tracer)


def check_solver(solver: Any) -> None:
  """Raises ValueError unless `solver` names one of `SOLVERS`."""
  if not isinstance(solver, str) or solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _check_int(name: str, value: Any, low: int) -> None:
  # Loop bounds and block shapes: they must be plain integers, known at trace time.
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if value < low:
    raise ValueError(f"{name} must be >= {low}, got {value}")


def check_block_rows(block_rows: Any) -> None:
  """Raises ValueError unless `block_rows` is None or an integer >= 1."""
  if block_rows is not None:
    _check_int("block_rows", block_rows, 1)


def check_static(shape: tuple[int, ...], dtype: Any, prior: jax.Array, epsilon: Any,
                 threshold: Any, max_iterations: Any, inner_iterations: Any) -> None:
  """Raises ValueError on bad shapes, dtypes and hyper-parameters (all static).

  Args:
    shape: shape of log P (materialised or not).
    dtype: dtype of log P.
    prior: the class marginal.
    epsilon: entropic regularisation.
    threshold: stopping threshold of the class-marginal error.
    max_iterations: iteration cap.
    inner_iterations: iterations between error checks.
  """
  if len(shape) != 2:
    raise ValueError(f"log_p must be (N, K), got shape {shape}")
  n, k = shape
  if prior.shape != (k,):
    raise ValueError(f"prior must have shape ({k},) to match log_p, got {prior.shape}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"log_p must have a floating dtype, got {dtype}")
  if n == 0:
    raise ValueError("log_p has no rows (N = 0)")
  if k == 0:
    raise ValueError("log_p has no columns (K = 0)")
  # epsilon and threshold are Python floats in practice, but a caller may pass
  # them as (traced) arrays; only values that are known can be checked.
  if is_concrete(epsilon):
    if not math.isfinite(float(epsilon)):
      raise ValueError(f"epsilon must be finite, got {float(epsilon)}")
    if float(epsilon) <= 0:
      raise ValueError(f"epsilon must be > 0, got {float(epsilon)}")
  if is_concrete(threshold) and not float(threshold) > 0:  # `not >` catches NaN
    raise ValueError(f"threshold must be > 0, got {float(threshold)}")
  _check_int("max_iterations", max_iterations, 1)
  _check_int("inner_iterations", inner_iterations, 1)


def check_num_rows(num_rows: int | None, n: int) -> int:
  """The number of sample rows (`num_rows`, default all `n`); ValueError if outside [1, n]."""
  rows = n if num_rows is None else num_rows
  if not 1 <= rows <= n:
    raise ValueError(f"num_rows must be in [1, {n}] (the rows of log_p), got {rows}")
  return rows


@jax.jit
def log_p_stats(log_p: jax.Array) -> dict[str, jax.Array]:
  """Counts of NaN, +Inf and all -Inf rows of `log_p`, in one fused reduction."""
  # One jitted reduction: the masks are fused away instead of materialising
  # N x K booleans, which matters at ImageNet scale.
  has_finite = jnp.any(jnp.isfinite(log_p), axis=1)
  return {
      "nan": jnp.sum(jnp.isnan(log_p)),
      "pos_inf": jnp.sum(log_p == jnp.inf),
      "dead_rows": jnp.sum(~has_finite),
      "first_dead_row": jnp.argmin(has_finite),
  }


@jax.jit
def prior_stats(prior: jax.Array) -> dict[str, jax.Array]:
  """Counts of non-finite and negative entries of `prior`, and its sum."""
  # Summed in at least float32 so that a float16 prior is not rejected for the
  # rounding of its own sum.
  p = prior.astype(jnp.promote_types(prior.dtype, jnp.float32))
  return {
      "non_finite": jnp.sum(~jnp.isfinite(p)),
      "negative": jnp.sum(p < 0),
      "sum": jnp.sum(p),
  }


def log_p_checks(stats):
  """(ok, message template, *format args) for every value check of log_p.

  Shared by the eager checks and `checked_pseudo_labels` so that both report
  the same messages; `stats` holds either NumPy scalars or traced arrays.
  """
  return [
      (stats["nan"] == 0, "log_p has {} NaN entries", stats["nan"]),
      (stats["pos_inf"] == 0, "log_p has {} +Inf entries", stats["pos_inf"]),
      (stats["dead_rows"] == 0,
       "log_p has {} rows with no finite entry (first: row {}); every sample "
       "needs at least one class it can be transported to",
       stats["dead_rows"], stats["first_dead_row"]),
  ]


def prior_checks(stats):
  """(ok, message template, *format args) for every value check of prior."""
  return [
      (stats["non_finite"] == 0, "prior has {} NaN or Inf entries",
       stats["non_finite"]),
      (stats["negative"] == 0, "prior has {} negative entries", stats["negative"]),
      (abs(stats["sum"] - 1) <= PRIOR_SUM_TOLERANCE,
       "prior sums to {:.6g}, not 1", stats["sum"]),
  ]


def check_values(log_p: jax.Array | None, prior: jax.Array) -> None:
  """Raises ValueError on bad values of whichever of the arrays are concrete.

  Args:
    log_p: (N, K) log P, or None where it is never materialised (streaming).
    prior: (K,) class marginal.
  """
  checks = []
  # A concrete array closed over by a function being traced is still checked
  # now: compile-time evaluation keeps its statistics concrete.
  with jax.ensure_compile_time_eval():
    if log_p is not None and is_concrete(log_p):
      checks += log_p_checks(jax.device_get(log_p_stats(log_p)))
    if is_concrete(prior):
      checks += prior_checks(jax.device_get(prior_stats(prior)))
  for ok, message, *args in checks:
    if not ok:
      raise ValueError(message.format(*args))

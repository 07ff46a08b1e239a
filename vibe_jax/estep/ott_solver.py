"""The E-step's Sinkhorn by ott-jax (`pseudo_labels(..., solver="ott")`).

ott's compiled solve reads the whole N x K cost matrix through XLA-fused
log-sum-exps; sharding follows the caller's arrays (XLA all-reduces the class
sums of a row-sharded `log_p`).
"""

import jax
import jax.numpy as jnp

from vibe_jax import runtime
from vibe_jax.estep.result import PseudoLabels

# ott imports these at its top for tools and plots the E-step never runs (1.2 s of a
# run's start on a 2-core CPU): they load only if touched. Not ott.neural: ott
# imports it under `suppress(ImportError)` (diffrax is optional), which only works
# if it loads at once, and it pulls in jaxopt and lineax, so those load anyway.
_LAZY_PARTS = ("ott.tools", "ott.datasets", "matplotlib.pyplot", "scipy.stats")


def load_ott():
  """ott's geometry, linear_problem and sinkhorn modules, imported at the first call.

  Importing ott takes 1.2-1.8 s on a 2-core CPU (jaxopt, lineax, equinox,
  scipy.optimize, matplotlib come with it): importing `vibe_jax`, or a run without
  an ott E-step (other defenses, the blocked solver), does not pay it. (Importing
  it on a background thread at a run's start did not shorten the quickstart on
  2 cores: the threads share the GIL.)
  """
  # Lazy: see the docstring (ott is in tests/test_architecture.py's LAZY).
  with runtime.lazy_modules(_LAZY_PARTS):
    from ott.geometry import geometry  # pylint: disable=g-import-not-at-top
    from ott.problems.linear import linear_problem  # pylint: disable=g-import-not-at-top
    from ott.solvers.linear import sinkhorn  # pylint: disable=g-import-not-at-top
  return geometry, linear_problem, sinkhorn


__all__ = ["ott_pseudo_labels", "load_ott"]


def ott_pseudo_labels(log_p: jax.Array, prior: jax.Array, *, epsilon: float,
                      threshold: float, max_iterations: int, min_iterations: int,
                      inner_iterations: int, rows: int) -> PseudoLabels:
  """Sinkhorn by ott-jax on the cost -log_p; arguments already validated.

  Args:
    log_p: (N, K) log P.
    prior: (K,) class marginal.
    epsilon: entropic regularisation.
    threshold: stop once the class-marginal L1 error is below this.
    max_iterations: iteration cap.
    min_iterations: iterations run before the first stop (the reference mode's
      `max_iterations`: one scan, error computed at the end).
    inner_iterations: iterations between error checks.
    rows: the first `rows` rows are samples; the rest zero-mass padding.

  Returns:
    A `PseudoLabels`.
  """
  geometry, linear_problem, sinkhorn = load_ott()
  n, k = log_p.shape
  dtype = log_p.dtype
  geom = geometry.Geometry(cost_matrix=-log_p, epsilon=epsilon)
  # Rows past `rows` are padding (e.g. to divide N over the devices): zero mass.
  a = jnp.where(jnp.arange(n) < rows, 1.0 / rows, 0.0).astype(dtype)
  problem = linear_problem.LinearProblem(geom, a=a, b=prior.astype(dtype))
  solver = sinkhorn.Sinkhorn(
      threshold=threshold,
      max_iterations=max_iterations,
      min_iterations=min_iterations,
      inner_iterations=inner_iterations,
      implicit_diff=None,  # the E-step is never differentiated
      use_danskin=True,
  )
  # The reference starts from the sample potential log(1/N) (in units of epsilon)
  # and updates the class potential first; ott updates g first too. Padding rows
  # start at -Inf (zero mass) so that they never enter a sum: padded or not, the
  # iterations are the same.
  sample = jnp.arange(n) < rows
  init = (jnp.where(sample, epsilon * jnp.log(1.0 / rows), -jnp.inf).astype(dtype),
          jnp.zeros((k,), dtype))
  out = solver(problem, init=init)
  f, g = jax.lax.stop_gradient(out.f), jax.lax.stop_gradient(out.g)
  # argmax_l of the log plan (f_i + g_l - C_il) / eps; f_i is constant in l.
  labels = jnp.argmax(log_p + g[None, :], axis=1).astype(jnp.int32)
  errors = out.errors
  n_checked = jnp.sum(errors != -1)
  error = jnp.where(n_checked > 0, errors[jnp.maximum(n_checked - 1, 0)], jnp.inf)
  return PseudoLabels(
      labels=labels,
      converged=error < threshold,
      iterations=out.n_iters,
      error=error,
      f=f,
      g=g,
  )

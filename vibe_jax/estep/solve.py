"""`pseudo_labels`: the E-step on a materialised log P, by either Sinkhorn solver."""

import functools

import jax
from jax import lax
from jax.experimental import checkify
import jax.numpy as jnp

from vibe_jax.estep import blocked, checks, row_sharding
from vibe_jax.estep.ott_solver import ott_pseudo_labels
from vibe_jax.estep.result import REFERENCE_ITERATIONS, PseudoLabels

__all__ = ["pseudo_labels", "checked_pseudo_labels"]


def pseudo_labels(
    log_p: jax.Array,
    prior: jax.Array,
    *,
    epsilon: float = 1.0 / 25.0,
    threshold: float = 1e-3,
    max_iterations: int = REFERENCE_ITERATIONS,
    inner_iterations: int = 10,
    reference_iterations: bool = False,
    num_rows: int | None = None,
    solver: str = "ott",
    block_rows: int | None = None,
) -> PseudoLabels:
  """Clean pseudo-labels by Sinkhorn on log p(l|x) + log p(y|l[,x]).

  Solves max_Q <Q, log_p> + epsilon H(Q) subject to Q 1 = 1/N and Q^T 1 = prior,
  then returns argmax_l Q[i, l] for each sample.

  Solvers. "ott" (the default) is ott-jax's Sinkhorn. "blocked" is ours
  (`vibe_jax.estep.blocked`): the same iterations (g first, then f, from
  f = epsilon log(1/N); the same error, checks and stopping), computed a block
  of `block_rows` rows at a time: log P read once and one exp per entry per
  iteration, no N x K temporary. Labels agree with ott's up to float32 ties.

  Validation. Shapes, dtypes and the Python hyper-parameters are always
  checked, under jit too (except `epsilon` and `threshold` if they are passed
  as traced arrays). The values of `log_p` and `prior` are checked only
  when they are concrete, i.e. when this function is called outside jit (and
  vmap, grad, ...); each check costs one fused reduction and a host sync.

  Under jit, bad values are NOT detected and nothing raises. What comes out
  (measured with ott-jax 0.6.0 on a 200 x 4 problem, default settings):

  - NaN or +Inf in `log_p`: Sinkhorn stops at the first error check (after
    `inner_iterations` iterations) with `converged=False` and `error` NaN or
    Inf; the labels come from that unconverged plan (16% differed from the
    clean problem's) and the affected row is labelled with the NaN/+Inf column.
    With `reference_iterations=True` it runs all 10,001 iterations, same flags.
  - a row of `log_p` that is all -Inf: runs to the iteration cap,
    `converged=False`, `error` = 1/N (that row's mass cannot be placed); the
    row is labelled 0, the other rows are almost unaffected.
  - `prior` summing to s != 1: runs to the iteration cap, `converged=False`,
    `error` = |s - 1|; the labels are those of the normalised prior.
  - `prior` with a negative or NaN entry: `converged=False`, `error` NaN, and
    every sample is labelled with that class.

  So `converged` is False for every bad value above, but it is also False for a
  valid problem that needs more iterations. To check values under jit, use
  `checked_pseudo_labels` under `jax.experimental.checkify.checkify`.

  Args:
    log_p: (N, K) floating log-joint of every sample and class, N, K >= 1; no
      NaN or +Inf; -Inf (an impossible class) is allowed as long as every row
      keeps a finite entry.
    prior: (K,) class marginal: finite, non-negative, summing to 1 (within
      `PRIOR_SUM_TOLERANCE`).
    epsilon: entropic regularisation (the reference's 1 / lambda, lambda = 25);
      finite and > 0.
    threshold: stop once the L1 error of the class marginal is below this; > 0.
    max_iterations: iteration cap; >= 1.
    inner_iterations: how often (in iterations) the error is checked; >= 1.
    reference_iterations: run exactly `REFERENCE_ITERATIONS` iterations, as the
      reference does, ignoring `threshold`, `max_iterations`, `inner_iterations`
      (they are still validated).
    num_rows: the first `num_rows` rows are samples (mass 1 / num_rows each); the
      rest are padding with zero mass, e.g. to divide N over the devices (default:
      every row). Padding has zero mass from the start (f = -Inf), so the
      samples' results are those of the unpadded log P; its labels are
      meaningless.
    solver: "ott" or "blocked".
    block_rows: rows per block of the blocked solver (default
      `blocked.default_block_rows(K)`: about 2^20 entries); ignored by "ott".

  Sharding: the computation follows the caller's arrays. A `log_p` sharded by
  rows (`NamedSharding(mesh, P("data", None))`, N divisible by the devices: pad
  with `num_rows`) gives a computation sharded by rows: each device holds only
  its rows of log P, and the labels come back sharded the same way. ott's class
  sums are all-reduced by XLA; the blocked solver runs its loop per device
  (`shard_map`) and all-reduces K class sums per iteration. Under jit the
  blocked solver takes any `log_p` on a mesh with a "data" axis dividing N as
  row-sharded (`row_sharding.row_mesh`).

  Returns:
    A `PseudoLabels`.

  Raises:
    ValueError: on any violation above that can be seen (see Validation), with
      a message naming the argument and the problem.
  """
  checks.check_solver(solver)
  checks.check_block_rows(block_rows)
  checks.check_static(log_p.shape, log_p.dtype, prior, epsilon, threshold, max_iterations,
                      inner_iterations)
  checks.check_values(log_p, prior)
  n, k = log_p.shape
  rows = checks.check_num_rows(num_rows, n)
  if reference_iterations:
    # One round of exactly 10,001 iterations: the error is computed once, at the end.
    max_iterations = inner_iterations = REFERENCE_ITERATIONS
  if solver == "ott":
    return ott_pseudo_labels(
        log_p, prior, epsilon=epsilon, threshold=threshold, max_iterations=max_iterations,
        min_iterations=max_iterations if reference_iterations else 0,
        inner_iterations=inner_iterations, rows=rows)

  return _blocked_pseudo_labels(
      log_p, prior, epsilon, threshold, max_iterations=max_iterations,
      inner_iterations=inner_iterations, num_rows=rows,
      block_rows=block_rows or blocked.default_block_rows(k))


# Jitted so that an eager call compiles its loops once per shape (under an outer
# jit it is inlined); epsilon and threshold are arguments, so that new values do
# not recompile and traced values are accepted.
@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations",
                                             "num_rows", "block_rows"))
def _blocked_pseudo_labels(log_p, prior, epsilon, threshold, *, max_iterations,
                           inner_iterations, num_rows, block_rows):
  """`pseudo_labels(..., solver="blocked")` once validated."""
  def slice_rows(log_p_, size):
    return lambda start: lax.dynamic_slice_in_dim(log_p_, start, size, axis=0)

  out = row_sharding.solve_rows(
      slice_rows, (log_p,), prior, block_rows=block_rows,
      dtype=jnp.promote_types(log_p.dtype, jnp.float32), num_rows=num_rows,
      epsilon=epsilon, threshold=threshold, max_iterations=max_iterations,
      inner_iterations=inner_iterations)
  # The E-step is never differentiated (as ott's solve under stop_gradient).
  return jax.tree.map(lax.stop_gradient, out)


def checked_pseudo_labels(
    log_p: jax.Array,
    prior: jax.Array,
    *,
    epsilon: float = 1.0 / 25.0,
    threshold: float = 1e-3,
    max_iterations: int = REFERENCE_ITERATIONS,
    inner_iterations: int = 10,
    reference_iterations: bool = False,
    num_rows: int | None = None,
    solver: str = "ott",
    block_rows: int | None = None,
) -> PseudoLabels:
  """`pseudo_labels` with its value checks as `checkify.check`s, for use under jit.

  Under jit `pseudo_labels` cannot raise on bad values; this variant records
  them in a checkify error instead (same messages as the eager checks):

    run = checkify.checkify(jax.jit(estep.checked_pseudo_labels, static_argnames=(
        "epsilon", "threshold", "max_iterations", "inner_iterations",
        "reference_iterations", "solver", "block_rows")))
    err, out = run(log_p, prior)
    err.throw()  # raises JaxRuntimeError (a ValueError) naming the first problem

  Jitting it without `checkify.checkify` fails at trace time ("Cannot abstractly
  evaluate a checkify.check which was not functionalized"); called eagerly it
  raises ValueError just like `pseudo_labels`. The checks cost one reduction
  over `log_p`; the Sinkhorn result is the same as `pseudo_labels`'s.

  Args and Returns: as `pseudo_labels`.
  """
  found = (checks.log_p_checks(checks.log_p_stats(log_p))
           + checks.prior_checks(checks.prior_stats(prior)))
  for ok, message, *args in found:
    checkify.check(ok, message, *args)
  return pseudo_labels(
      log_p, prior, epsilon=epsilon, threshold=threshold,
      max_iterations=max_iterations, inner_iterations=inner_iterations,
      reference_iterations=reference_iterations, num_rows=num_rows, solver=solver,
      block_rows=block_rows)

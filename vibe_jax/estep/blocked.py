"""A log-domain Sinkhorn that reads log P a block of rows at a time.

Why: ott's compiled solve writes (f + g - C) / eps to a full N x K temporary in
each half-iteration and reads it twice (32 bytes per entry per iteration where 8
suffice; peak memory about 3x the matrix). This solver holds one block of rows of
temporaries, reads log P once per iteration and computes one exp per entry:

  class update, from the last iteration's class marginal c:
    g_l  += eps (log b_l - log c_l)
  row pass, block by block in one `fori_loop`:
    e_il = exp((g_l + log P_il) / eps - s_i)        s_i: a shift, see below
    f_i  = eps (log a_i - s_i - log sum_l e_il)      the sample update (rows exact)
    c_l += sum_i (a_i / sum_l e_il) e_il             the new plan's class marginal
  error = sum_l |c_l - b_l|                         ott's error, free

The class sums of the next half-iteration come from each block while it is in
cache: c is the class marginal of the plan (f, g) just computed, so
log c_l - g_l / eps = LSE_i((f_i + log P_il) / eps), the log-sum-exp ott takes.

Stabilisation. s_i is the row's previous log-sum-exp plus the largest change of
g (units of eps): an upper bound of the row's largest term, so nothing overflows.
While the changes of g spread by less than `_SPREAD_LIMIT` - log K, the largest
term stays above e^-60 and nothing that matters underflows; otherwise (the first
iteration) s_i is the row's maximum, one more read of the block. The first class
update (from f = eps log a) and that of a class whose plan mass may have
underflowed (c_l < `_TINY_MASS` b_l) are exact log-sum-exps over the rows with
a running max, as ott computes them.

Semantics are ott's (`pseudo_labels(..., solver="ott")`): g first, then f, from
f = eps log(1 / rows) on the samples (-Inf on padding); the error is checked
every `inner_iterations`; f and g are returned in ott's convention. `Blocks.fn`
gives the rows, so the same loop serves a materialised log P and one recomputed
from features.
"""

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vibe_jax.estep.result import PseudoLabels

__all__ = ["RowBlock", "Blocks", "default_block_rows", "sinkhorn"]

# start (a traced int32) -> rows [start, start + size) of log P, shape (size, K).
RowBlock = Callable[[jax.Array], jax.Array]

# Entries of log P per block by default: 4 MiB of float32, which fits the
# last-level cache; measured best on a 2-core AVX-512 CPU at K = 1000 (see
# benchmarks/results/estep_blocked_cpu_2core.md).
_BLOCK_ENTRIES = 2**20

# While the changes of g spread by less than this (units of eps, log K included)
# the stale shifts keep every row's largest term above e^-60: far from float32's
# underflow at e^-87, so a row's sum keeps full relative precision.
_SPREAD_LIMIT = 60.0

# A class with plan mass below this fraction of its prior may have lost terms to
# underflow; its update is then taken from an exact log-sum-exp.
_TINY_MASS = 1e-6


def default_block_rows(k: int) -> int:
  """Rows per block for K classes: about `_BLOCK_ENTRIES` entries, at least 8."""
  return max(8, _BLOCK_ENTRIES // k)


class Blocks(NamedTuple):
  """The row blocks of one device's log P.

  Attributes:
    fn: start -> rows [start, start + size) of log P; `start` is in [0, rows - size].
    rows: rows of log P on this device.
    size: rows per block, <= rows.
    dtype: the dtype to compute in.
    axis_name: the mesh axis the rows are split over (under `shard_map`), or None.
  """

  fn: RowBlock
  rows: int
  size: int
  dtype: jnp.dtype
  axis_name: str | None = None

  @property
  def count(self) -> int:
    """Blocks per pass."""
    return -(-self.rows // self.size)

  def start(self, i: jax.Array) -> jax.Array:
    """First row of block i."""
    # The last block ends at the last row: where `size` does not divide the rows
    # it overlaps its predecessor, and `fresh` masks those rows out of every sum.
    return jnp.minimum(i * self.size, self.rows - self.size)

  def fresh(self, i: jax.Array, start: jax.Array) -> jax.Array:
    """(size,) bool: rows of block i that no earlier block covered."""
    return start + jnp.arange(self.size) >= i * self.size

  def block(self, start: jax.Array) -> jax.Array:
    """(size, K) rows of log P from `start`, in `dtype`."""
    return self.fn(start).astype(self.dtype)

  def varying(self, x: jax.Array) -> jax.Array:
    """`x` typed as differing between devices, for a loop carry that becomes so."""
    # shard_map checks that a loop's carry keeps its type; zeros made on every
    # device are the same everywhere until the rows of log P enter them.
    return x if self.axis_name is None else lax.pcast(x, self.axis_name, to="varying")

  def psum(self, x: jax.Array) -> jax.Array:
    """Sum over the devices of the rows (identity on one device)."""
    return x if self.axis_name is None else lax.psum(x, self.axis_name)

  def pmax(self, x: jax.Array) -> jax.Array:
    """Maximum over the devices of the rows (identity on one device)."""
    return x if self.axis_name is None else lax.pmax(x, self.axis_name)


class _Problem(NamedTuple):
  eps: jax.Array
  inv_eps: jax.Array
  log_a: jax.Array  # (rows,) log sample mass: -log(num_rows), -Inf on padding
  b: jax.Array  # (K,) prior
  log_b: jax.Array


class _State(NamedTuple):
  g: jax.Array  # (K,) class potential of the last row pass (the output g)
  l: jax.Array  # (rows,) log-sum-exps of the last row pass, units of eps
  marginal: jax.Array  # (K,) class marginal of the last row pass's plan
  error: jax.Array  # its L1 error
  iterations: jax.Array


def _finite_or_zero(x: jax.Array) -> jax.Array:
  # ott's guard: an all -Inf log-sum-exp (an impossible row or class) adds 0.
  return jnp.where(jnp.isfinite(x), x, 0.0)


def _kahan_add(total: jax.Array, lost: jax.Array, value: jax.Array):
  # Compensated sum over thousands of blocks: K more additions per block keep
  # the class marginal (and so the error and g) at float32 precision. The sum
  # is total - lost.
  y = value - lost
  t = total + y
  return t, (t - total) - y


def _column_lse(blocks: Blocks, u: jax.Array, inv_eps: jax.Array, k: int) -> jax.Array:
  """LSE_i(log P_il / eps + u_i) for each of the k classes, over all rows of all devices."""

  def body(i, carry):
    m, t = carry
    start = blocks.start(i)
    u_i = jnp.where(blocks.fresh(i, start),
                    lax.dynamic_slice_in_dim(u, start, blocks.size), -jnp.inf)
    y = blocks.block(start) * inv_eps + u_i[:, None]
    # A running max over the blocks: one pass, and no N x K temporary.
    new = jnp.maximum(m, jnp.max(y, axis=0))
    safe = _finite_or_zero(new)
    return new, t * jnp.exp(m - safe) + jnp.sum(jnp.exp(y - safe[None, :]), axis=0)

  init = (blocks.varying(jnp.full((k,), -jnp.inf, blocks.dtype)),
          blocks.varying(jnp.zeros((k,), blocks.dtype)))
  m, t = lax.fori_loop(0, blocks.count, body, init)
  top = blocks.pmax(m)
  t = blocks.psum(t * jnp.exp(m - _finite_or_zero(top)))
  return _finite_or_zero(top) + jnp.log(t)


def _row_pass(blocks: Blocks, p: _Problem, gx: jax.Array, shift: jax.Array,
              exact: bool):
  """Sample update with g = gx * eps, and the new plan's class marginal.

  Returns (l, c): the rows' log-sum-exps LSE_l(x_il) of x = (g + log P) / eps and
  the class marginal c of the plan exp(x_il - l_i + log a_i), over all devices.
  """

  def body(i, carry):
    l, total, lost = carry
    start = blocks.start(i)
    x = blocks.block(start) * p.inv_eps + gx[None, :]
    if exact:
      s = _finite_or_zero(jnp.max(x, axis=1))
    else:
      s = lax.dynamic_slice_in_dim(shift, start, blocks.size)
    e = jnp.exp(x - s[:, None])  # the one exp per entry, reused by both sums
    row = jnp.sum(e, axis=1)
    a = jnp.exp(lax.dynamic_slice_in_dim(p.log_a, start, blocks.size))
    # `row != 0` drops impossible rows; a NaN row stays NaN, as under ott.
    w = jnp.where(blocks.fresh(i, start) & (row != 0), a / row, 0.0)
    # HIGHEST: accelerators may multiply float32 in bfloat16 or TF32 by default.
    mass = jnp.dot(w, e, precision=lax.Precision.HIGHEST)
    total, lost = _kahan_add(total, lost, mass)
    return lax.dynamic_update_slice_in_dim(l, s + jnp.log(row), start, 0), total, lost

  zeros = blocks.varying(jnp.zeros_like(gx))
  l, total, lost = lax.fori_loop(
      0, blocks.count, body,
      (blocks.varying(jnp.zeros((blocks.rows,), blocks.dtype)), zeros, zeros))
  return l, blocks.psum(total - lost)


def _class_update(blocks: Blocks, p: _Problem, state: _State) -> jax.Array:
  """The class update: eps log b - eps LSE_i((f_i + log P_il) / eps)."""

  def from_marginal():
    ratio = state.g + p.eps * (p.log_b - jnp.log(state.marginal))
    return jnp.where(p.b == 0, -jnp.inf, ratio)

  def exact():
    u = p.log_a - _finite_or_zero(state.l)  # f / eps
    lse = _column_lse(blocks, u, p.inv_eps, state.g.shape[0])
    return p.eps * p.log_b - p.eps * _finite_or_zero(lse)

  # The first update has no marginal: it starts from l = 0, i.e. f = eps log a.
  # `~(>=)` also sends NaN to the exact branch, which propagates it.
  lost = jnp.any((p.b > 0) & ~(state.marginal >= _TINY_MASS * p.b))
  return lax.cond((state.iterations == 0) | lost, exact, from_marginal)


def _iterate(blocks: Blocks, p: _Problem, state: _State) -> _State:
  """One Sinkhorn iteration: the class update, then the row pass."""
  g = _class_update(blocks, p, state)
  delta = g - state.g
  finite = jnp.isfinite(delta)
  up = jnp.max(jnp.where(finite, delta, -jnp.inf)) * p.inv_eps
  down = jnp.min(jnp.where(finite, delta, jnp.inf)) * p.inv_eps
  stale_ok = jnp.isfinite(up - down) & (up - down < _SPREAD_LIMIT - math.log(g.shape[0]))
  shift = _finite_or_zero(state.l + up)
  l, marginal = lax.cond(
      (state.iterations == 0) | ~stale_ok,
      functools.partial(_row_pass, blocks, p, exact=True),
      functools.partial(_row_pass, blocks, p, exact=False), g * p.inv_eps, shift)
  return _State(g=g, l=l, marginal=marginal, error=jnp.sum(jnp.abs(marginal - p.b)),
                iterations=state.iterations + 1)


def _labels(blocks: Blocks, g: jax.Array) -> jax.Array:
  """Row-wise argmax of log P + g (the plan's argmax; f is constant in a row)."""

  def body(i, labels):
    start = blocks.start(i)
    x = blocks.block(start) + g[None, :]
    # jnp.argmax's (value, index) reduction is 4x slower on the CPU than a max
    # then a min over the matching column indices (float: exact below 2^24). The
    # same answer: the first maximum, or the first NaN of a row with one.
    top = jnp.max(x, axis=1, keepdims=True)
    column = lax.broadcasted_iota(x.dtype, x.shape, 1)
    hit = (x == top) | jnp.isnan(x)
    best = jnp.min(jnp.where(hit, column, x.shape[1]), axis=1).astype(jnp.int32)
    return lax.dynamic_update_slice_in_dim(labels, best, start, 0)

  return lax.fori_loop(0, blocks.count, body,
                       blocks.varying(jnp.zeros((blocks.rows,), jnp.int32)))


def sinkhorn(blocks: Blocks, prior: jax.Array, *, epsilon: float, threshold: float,
             max_iterations: int, inner_iterations: int, num_rows: int,
             row_offset: jax.Array | int = 0) -> PseudoLabels:
  """The E-step's Sinkhorn on one device's row blocks (arguments already validated).

  Args:
    blocks: this device's rows of log P.
    prior: (K,) class marginal b.
    epsilon: entropic regularisation.
    threshold: stop once the class-marginal L1 error is below this.
    max_iterations: no new round of `inner_iterations` starts at or past this.
    inner_iterations: iterations between error checks.
    num_rows: global rows [0, num_rows) are samples (mass 1 / num_rows each), the
      rest zero-mass padding.
    row_offset: global index of this device's first row.

  Returns:
    A `PseudoLabels` with this device's rows of `labels` and `f`.
  """
  eps = jnp.asarray(epsilon, blocks.dtype)
  b = prior.astype(blocks.dtype)
  sample = row_offset + jnp.arange(blocks.rows) < num_rows
  log_a = jnp.where(sample, -math.log(num_rows), -jnp.inf).astype(blocks.dtype)
  p = _Problem(eps=eps, inv_eps=1 / eps, log_a=log_a, b=b, log_b=jnp.log(b))
  # ott's start: g = 0 and f = eps log(1 / num_rows) on the samples (-Inf on
  # the padding), which the first class update reads as l = 0.
  state = _State(g=jnp.zeros_like(b),
                 l=blocks.varying(jnp.zeros((blocks.rows,), blocks.dtype)), marginal=b,
                 error=jnp.asarray(jnp.inf, blocks.dtype), iterations=jnp.zeros((), jnp.int32))

  def keep_going(state):
    # ott's test: stop once converged or diverged (a non-finite error).
    unfinished = jnp.isfinite(state.error) & (state.error >= threshold)
    return (state.iterations < max_iterations) & ((state.iterations == 0) | unfinished)

  def round_of_iterations(state):
    return lax.fori_loop(0, inner_iterations, lambda _, s: _iterate(blocks, p, s), state)

  state = lax.while_loop(keep_going, round_of_iterations, state)
  return PseudoLabels(
      labels=_labels(blocks, state.g),
      converged=state.error < threshold,
      iterations=state.iterations,
      error=state.error,
      f=eps * log_a - eps * _finite_or_zero(state.l),
      g=state.g,
  )

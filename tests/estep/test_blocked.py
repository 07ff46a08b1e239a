"""The blocked Sinkhorn against ott's: same labels, potentials, iterations, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.estep.problems import problem
from vibe_jax import estep
from vibe_jax.estep import blocked

_RUN = jax.jit(estep.pseudo_labels, static_argnames=(
    "threshold", "max_iterations", "reference_iterations", "num_rows", "solver",
    "block_rows"))


def _plan(log_p, out, epsilon):
  return np.exp(np.asarray(estep.transport_log_plan(log_p, out, epsilon), np.float64))


@pytest.mark.parametrize("n,k,epsilon,block_rows,num_rows", [
    (3001, 50, 0.04, 256, None),  # 3001 rows: the last block overlaps its predecessor
    (2000, 10, 0.2, 4096, None),  # one block (capped at N)
    (603, 30, 0.02, 100, 590),  # 13 zero-mass padding rows, a smaller epsilon
], ids=["overlapping-block", "one-block", "padding-small-epsilon"])
def test_blocked_agrees_with_ott(n, k, epsilon, block_rows, num_rows):
  log_p, prior = problem(n=n, k=k, seed=n)
  if num_rows is not None:
    log_p = log_p.at[num_rows:].set(0.0)
    prior = jnp.asarray(prior)
  kwargs = dict(epsilon=epsilon, num_rows=num_rows)
  ott = _RUN(log_p, prior, **kwargs)
  ours = _RUN(log_p, prior, solver="blocked", block_rows=block_rows, **kwargs)
  rows = n if num_rows is None else num_rows
  assert np.mean(np.asarray(ours.labels)[:rows] == np.asarray(ott.labels)[:rows]) >= 0.9999
  assert int(ours.iterations) == int(ott.iterations)
  assert bool(ours.converged) and bool(ott.converged)
  np.testing.assert_allclose(float(ours.error), float(ott.error), atol=1e-6)
  # Potentials in ott's convention (the same gauge: the same start and updates).
  np.testing.assert_allclose(ours.g, ott.g, atol=1e-4)
  np.testing.assert_allclose(ours.f[:rows], ott.f[:rows], atol=1e-4)
  np.testing.assert_array_equal(np.isneginf(ours.f), np.isneginf(ott.f))
  np.testing.assert_allclose(_plan(log_p, ours, epsilon), _plan(log_p, ott, epsilon),
                             atol=1e-3 / rows)


def test_fixed_iterations_follow_ott_step_by_step():
  # 25 iterations, no convergence: the same unconverged plan and error.
  log_p, prior = problem(n=300, k=12, seed=7)
  ott = _RUN(log_p, prior, threshold=1e-12, max_iterations=25)
  ours = _RUN(log_p, prior, threshold=1e-12, max_iterations=25, solver="blocked",
              block_rows=64)
  assert int(ours.iterations) == int(ott.iterations) == 30  # rounds of 10
  assert not bool(ours.converged)
  np.testing.assert_allclose(float(ours.error), float(ott.error), rtol=1e-4)
  np.testing.assert_allclose(ours.g, ott.g, atol=1e-5)
  np.testing.assert_array_equal(ours.labels, ott.labels)


def test_exact_fallbacks_give_the_same_result(monkeypatch):
  # Force the exact branches (rows' maxima as shifts, exact class log-sum-exps)
  # in every iteration: the stable path must give what the fast one gives.
  log_p, prior = problem(n=900, k=20, seed=9)
  fast = _RUN(log_p, prior, solver="blocked", block_rows=97)
  monkeypatch.setattr(blocked, "_SPREAD_LIMIT", -1.0)
  monkeypatch.setattr(blocked, "_TINY_MASS", 2.0)
  # A block size of its own: a fresh trace that sees the patched constants.
  exact = _RUN(log_p, prior, solver="blocked", block_rows=98)
  assert int(exact.iterations) == int(fast.iterations)
  np.testing.assert_array_equal(exact.labels, fast.labels)
  np.testing.assert_allclose(exact.g, fast.g, atol=1e-5)
  np.testing.assert_allclose(float(exact.error), float(fast.error), atol=1e-6)


def test_default_block_rows_covers_about_a_million_entries():
  assert blocked.default_block_rows(1000) == 1048
  assert blocked.default_block_rows(10**7) == 8

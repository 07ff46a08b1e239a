"""`pseudo_labels`: marginals, agreement with an independent Sinkhorn, validation
(the same for both solvers), jit and checkify."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from tests.estep.problems import EPSILON, problem, with_value
from vibe_jax import estep


def _numpy_reference(log_p, prior, iterations):
  """Spec 4.4 written out in NumPy (float64): class scaling, then sample scaling."""
  a_mat = np.asarray(log_p, np.float64) / EPSILON
  n = a_mat.shape[0]
  log_r, log_s = np.log(np.asarray(prior, np.float64)), np.full(n, -np.log(n))
  b = log_s.copy()
  for _ in range(iterations):
    a = log_r - np.logaddexp.reduce(a_mat + b[:, None], axis=0)
    b = log_s - np.logaddexp.reduce(a_mat + a[None, :], axis=1)
  return np.argmax(a_mat + a[None, :], axis=1), a_mat + a[None, :] + b[:, None]


@pytest.mark.parametrize("solver", estep.SOLVERS)
def test_plan_has_the_requested_marginals(solver):
  log_p, prior = problem()
  out = jax.jit(lambda lp, p: estep.pseudo_labels(lp, p, threshold=1e-6, solver=solver,
                                                  block_rows=64))(log_p, prior)
  assert bool(out.converged)
  plan = np.exp(np.asarray(estep.transport_log_plan(log_p, out, EPSILON), np.float64))
  np.testing.assert_allclose(plan.sum(1), 1.0 / 300, rtol=1e-4)
  np.testing.assert_allclose(plan.sum(0), prior, atol=2e-6)
  # The hard labels follow the class marginal roughly.
  counts = np.bincount(np.asarray(out.labels), minlength=5) / 300
  np.testing.assert_allclose(counts, prior, atol=0.05)


@pytest.mark.parametrize("solver", estep.SOLVERS)
def test_reference_mode_matches_an_independent_implementation(solver):
  log_p, prior = problem(n=120, k=4, seed=1)
  out = estep.pseudo_labels(log_p, prior, reference_iterations=True, solver=solver,
                            block_rows=32)
  want_labels, want_plan = _numpy_reference(log_p, prior, estep.REFERENCE_ITERATIONS)
  assert int(out.iterations) == estep.REFERENCE_ITERATIONS
  np.testing.assert_array_equal(out.labels, want_labels)
  plan = estep.transport_log_plan(log_p, out, EPSILON)
  np.testing.assert_allclose(np.exp(plan), np.exp(want_plan), atol=1e-6)


def test_threshold_stops_early_and_agrees_with_reference_mode():
  log_p, prior = problem(n=2000, k=10, seed=2)
  early = estep.pseudo_labels(log_p, prior, threshold=1e-4)
  full = estep.pseudo_labels(log_p, prior, reference_iterations=True)
  assert int(early.iterations) < estep.REFERENCE_ITERATIONS
  assert float(early.error) < 1e-4
  assert np.mean(np.asarray(early.labels) == np.asarray(full.labels)) >= 0.995


def test_uniform_log_p_follows_the_prior_exactly_in_counts():
  # Identical rows: any balanced split is optimal; the plan must still be prior.
  prior = jnp.asarray([0.5, 0.25, 0.25])
  out = estep.pseudo_labels(jnp.zeros((8, 3)), prior, threshold=1e-6)
  plan = np.exp(np.asarray(estep.transport_log_plan(jnp.zeros((8, 3)), out, EPSILON)))
  np.testing.assert_allclose(plan, np.tile(np.asarray(prior) / 8, (8, 1)), atol=1e-6)


@pytest.mark.parametrize("solver", estep.SOLVERS)
@pytest.mark.parametrize("shape,prior_shape", [((5,), (5,)), ((4, 3), (4,))])
def test_bad_shapes_are_named(shape, prior_shape, solver):
  with pytest.raises(ValueError, match="shape"):
    estep.pseudo_labels(jnp.zeros(shape), jnp.ones(prior_shape) / prior_shape[0],
                        solver=solver)


_LOG_P, _PRIOR = problem(n=20, k=4, seed=3)


@pytest.mark.parametrize("log_p,prior,kwargs,message", [
    (_LOG_P, _PRIOR * 0.83, {}, r"prior sums to 0\.83\d*, not 1"),
    (_LOG_P, _PRIOR * 1.2, {}, r"prior sums to 1\.2\d*, not 1"),
    (_LOG_P, jnp.asarray([0.5, 0.3, 0.3, -0.1]), {}, "prior has 1 negative entries"),
    (_LOG_P, jnp.asarray([0.5, 0.3, np.nan, 0.2]), {}, "prior has 1 NaN or Inf"),
    (_LOG_P, jnp.asarray([0.5, 0.3, np.inf, 0.2]), {}, "prior has 1 NaN or Inf"),
    (with_value(with_value(_LOG_P, (3, 1), np.nan), (5, 0), np.nan), _PRIOR, {},
     "log_p has 2 NaN entries"),
    (with_value(_LOG_P, (3, 1), np.inf), _PRIOR, {}, r"log_p has 1 \+Inf entries"),
    (with_value(_LOG_P, 7, -np.inf), _PRIOR, {},
     r"log_p has 1 rows with no finite entry \(first: row 7\)"),
    (jnp.zeros((0, 4)), _PRIOR, {}, r"log_p has no rows \(N = 0\)"),
    (jnp.zeros((5, 0)), jnp.zeros((0,)), {}, r"log_p has no columns \(K = 0\)"),
    (jnp.zeros((5, 4), jnp.int32), _PRIOR, {}, "log_p must have a floating dtype"),
    (_LOG_P, _PRIOR, {"epsilon": -0.1}, r"epsilon must be > 0, got -0\.1"),
    (_LOG_P, _PRIOR, {"epsilon": 0.0}, "epsilon must be > 0, got 0"),
    (_LOG_P, _PRIOR, {"epsilon": float("inf")}, "epsilon must be finite, got inf"),
    (_LOG_P, _PRIOR, {"epsilon": float("nan")}, "epsilon must be finite, got nan"),
    (_LOG_P, _PRIOR, {"threshold": 0.0}, "threshold must be > 0, got 0"),
    (_LOG_P, _PRIOR, {"threshold": -1e-3}, "threshold must be > 0"),
    (_LOG_P, _PRIOR, {"max_iterations": 0}, "max_iterations must be >= 1, got 0"),
    (_LOG_P, _PRIOR, {"max_iterations": 10.5}, "max_iterations must be an integer"),
    (_LOG_P, _PRIOR, {"inner_iterations": 0}, "inner_iterations must be >= 1, got 0"),
    (_LOG_P, _PRIOR, {"block_rows": 0}, "block_rows must be >= 1, got 0"),
    (_LOG_P, _PRIOR, {"solver": "sinkhorn"},
     r"solver must be one of \('ott', 'blocked'\), got 'sinkhorn'"),
], ids=["prior-sum-low", "prior-sum-high", "prior-negative", "prior-nan", "prior-inf",
        "log-p-nan", "log-p-pos-inf", "log-p-dead-row", "no-rows", "no-columns",
        "log-p-int", "epsilon-negative", "epsilon-zero", "epsilon-inf", "epsilon-nan",
        "threshold-zero", "threshold-negative", "max-iterations-zero",
        "max-iterations-float", "inner-iterations-zero", "block-rows-zero", "solver-unknown"])
@pytest.mark.parametrize("solver", estep.SOLVERS)
def test_bad_inputs_are_named(log_p, prior, kwargs, message, solver):
  with pytest.raises(ValueError, match=message):
    estep.pseudo_labels(log_p, prior, **{"solver": solver, **kwargs})


@pytest.mark.parametrize("solver", estep.SOLVERS)
def test_valid_edge_values_are_accepted(solver):
  # -Inf entries (impossible classes) and zero prior mass are legitimate, and the
  # prior only has to sum to 1 within float32 rounding.
  log_p = with_value(_LOG_P, (3, slice(1, 4)), -np.inf)
  prior = jnp.asarray([0.5, 0.3, 0.2, 0.0]) * (1 + 5e-5)
  out = estep.pseudo_labels(log_p, prior, solver=solver, block_rows=8)
  assert bool(out.converged)
  assert int(out.labels[3]) == 0  # its only possible class
  assert not np.any(np.asarray(out.labels) == 3)  # no mass for class 3


@pytest.mark.parametrize("solver", estep.SOLVERS)
def test_static_checks_still_raise_under_jit(solver):
  with pytest.raises(ValueError, match="epsilon must be > 0"):
    jax.jit(lambda lp, p: estep.pseudo_labels(lp, p, epsilon=-0.1, solver=solver))(
        _LOG_P, _PRIOR)
  with pytest.raises(ValueError, match="no rows"):
    jax.jit(lambda lp, p: estep.pseudo_labels(lp, p, solver=solver))(jnp.zeros((0, 4)),
                                                                      _PRIOR)


def test_valid_inputs_work_under_jit_and_match_eager():
  run = jax.jit(estep.pseudo_labels, static_argnames=("epsilon", "threshold"))
  jitted = run(_LOG_P, _PRIOR, epsilon=EPSILON, threshold=1e-5)
  eager = estep.pseudo_labels(_LOG_P, _PRIOR, epsilon=EPSILON, threshold=1e-5)
  assert bool(jitted.converged)
  np.testing.assert_array_equal(jitted.labels, eager.labels)
  np.testing.assert_allclose(jitted.g, eager.g, atol=1e-5)


@pytest.mark.parametrize("solver", estep.SOLVERS)
def test_bad_values_under_jit_do_not_raise_and_are_not_converged(solver):
  # The documented behaviour: under jit a NaN cannot raise, it only shows up as
  # a non-converged result with a NaN error, after the first check.
  run = jax.jit(lambda lp, p: estep.pseudo_labels(lp, p, solver=solver, block_rows=8))
  out = run(with_value(_LOG_P, (3, 1), np.nan), _PRIOR)
  assert not bool(out.converged) and int(out.iterations) == 10
  assert np.isnan(float(out.error))
  assert int(out.labels[3]) == 1  # labelled with its NaN column


_STATIC = ("epsilon", "threshold", "max_iterations", "inner_iterations",
           "reference_iterations", "solver", "block_rows")


def test_checkify_catches_bad_values_under_jit():
  run = checkify.checkify(jax.jit(estep.checked_pseudo_labels, static_argnames=_STATIC))
  err, out = run(_LOG_P, _PRIOR, threshold=1e-5)
  err.throw()  # valid input: no error
  want = estep.pseudo_labels(_LOG_P, _PRIOR, threshold=1e-5)
  np.testing.assert_array_equal(out.labels, want.labels)
  err, _ = run(with_value(_LOG_P, (3, 1), np.nan), _PRIOR, threshold=1e-5)
  with pytest.raises(ValueError, match="log_p has 1 NaN entries"):
    err.throw()
  err, _ = run(_LOG_P, _PRIOR * 0.83, threshold=1e-5)
  with pytest.raises(ValueError, match=r"prior sums to 0\.83"):
    err.throw()


@pytest.mark.parametrize("solver", estep.SOLVERS)
def test_num_rows_outside_the_rows_of_log_p_is_refused(solver):
  log_p = jnp.zeros((6, 3))
  prior = jnp.full((3,), 1 / 3)
  for bad in (0, 7):
    with pytest.raises(ValueError, match="num_rows must be in"):
      estep.pseudo_labels(log_p, prior, num_rows=bad, solver=solver)


@pytest.mark.parametrize("solver", ["ott"])  # "blocked": tests/estep/test_blocked.py
def test_padding_rows_change_nothing(solver):
  # Zero-mass rows from the first iteration: padded or not, the same iterations.
  log_p, prior = problem(n=500, k=6, seed=4)
  run = jax.jit(estep.pseudo_labels, static_argnames=("num_rows", "solver", "block_rows"))
  plain = run(log_p, prior, solver=solver, block_rows=64)
  padded = run(jnp.concatenate([log_p, jnp.zeros((7, 6))]), prior, num_rows=500,
               solver=solver, block_rows=64)
  assert padded.labels.shape == (507,) and int(padded.iterations) == int(plain.iterations)
  np.testing.assert_array_equal(padded.labels[:500], plain.labels)
  np.testing.assert_allclose(padded.g, plain.g, atol=1e-5)
  np.testing.assert_allclose(padded.f[:500], plain.f, atol=1e-5)
  assert np.all(np.isneginf(np.asarray(padded.f[500:])))

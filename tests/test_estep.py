"""E-step: marginals, agreement with an independent Sinkhorn, chunked log P."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from vibe_jax import estep

EPSILON = 1.0 / 25.0


def _problem(n=300, k=5, seed=0):
  rng = np.random.default_rng(seed)
  logits = 4.0 * rng.normal(size=(n, k)).astype(np.float32)
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  prior = rng.dirichlet(np.full(k, 20.0)).astype(np.float32)
  return jnp.asarray(log_p), jnp.asarray(prior)


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


def test_plan_has_the_requested_marginals():
  log_p, prior = _problem()
  out = jax.jit(lambda lp, p: estep.pseudo_labels(lp, p, threshold=1e-6))(log_p, prior)
  assert bool(out.converged)
  plan = np.exp(np.asarray(estep.transport_log_plan(log_p, out, EPSILON), np.float64))
  np.testing.assert_allclose(plan.sum(1), 1.0 / 300, rtol=1e-4)
  np.testing.assert_allclose(plan.sum(0), prior, atol=2e-6)
  # The hard labels follow the class marginal roughly.
  counts = np.bincount(np.asarray(out.labels), minlength=5) / 300
  np.testing.assert_allclose(counts, prior, atol=0.05)


def test_reference_mode_matches_an_independent_implementation():
  log_p, prior = _problem(n=120, k=4, seed=1)
  out = estep.pseudo_labels(log_p, prior, reference_iterations=True)
  want_labels, want_plan = _numpy_reference(log_p, prior, estep.REFERENCE_ITERATIONS)
  assert int(out.iterations) == estep.REFERENCE_ITERATIONS
  np.testing.assert_array_equal(out.labels, want_labels)
  plan = estep.transport_log_plan(log_p, out, EPSILON)
  np.testing.assert_allclose(np.exp(plan), np.exp(want_plan), atol=1e-6)


def test_threshold_stops_early_and_agrees_with_reference_mode():
  log_p, prior = _problem(n=2000, k=10, seed=2)
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


@pytest.mark.parametrize("shape,prior_shape", [((5,), (5,)), ((4, 3), (4,))])
def test_bad_shapes_are_named(shape, prior_shape):
  with pytest.raises(ValueError, match="shape"):
    estep.pseudo_labels(jnp.zeros(shape), jnp.ones(prior_shape) / prior_shape[0])


@pytest.mark.parametrize("n,chunk", [(10, 3), (10, 10), (7, 100), (12, 4)])
def test_dataset_log_joint_equals_one_pass(n, chunk):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, 6)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
  w = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  fn = lambda xb, yb: jax.nn.log_softmax(xb @ w, axis=1) + yb[:, None]
  got = jax.jit(lambda a, b: estep.dataset_log_joint(fn, a, b, chunk_size=chunk))(x, y)
  np.testing.assert_allclose(got, fn(x, y), atol=1e-5)


def test_dataset_log_joint_rejects_mismatched_labels():
  with pytest.raises(ValueError, match="labels"):
    estep.dataset_log_joint(lambda a, b: a, jnp.zeros((4, 2)), jnp.zeros((3,), jnp.int32))


def _with(array, index, value):
  out = np.array(array)
  out[index] = value
  return jnp.asarray(out)


_LOG_P, _PRIOR = _problem(n=20, k=4, seed=3)


@pytest.mark.parametrize("log_p,prior,kwargs,message", [
    (_LOG_P, _PRIOR * 0.83, {}, r"prior sums to 0\.83\d*, not 1"),
    (_LOG_P, _PRIOR * 1.2, {}, r"prior sums to 1\.2\d*, not 1"),
    (_LOG_P, jnp.asarray([0.5, 0.3, 0.3, -0.1]), {}, "prior has 1 negative entries"),
    (_LOG_P, jnp.asarray([0.5, 0.3, np.nan, 0.2]), {}, "prior has 1 NaN or Inf"),
    (_LOG_P, jnp.asarray([0.5, 0.3, np.inf, 0.2]), {}, "prior has 1 NaN or Inf"),
    (_with(_with(_LOG_P, (3, 1), np.nan), (5, 0), np.nan), _PRIOR, {},
     "log_p has 2 NaN entries"),
    (_with(_LOG_P, (3, 1), np.inf), _PRIOR, {}, r"log_p has 1 \+Inf entries"),
    (_with(_LOG_P, 7, -np.inf), _PRIOR, {},
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
], ids=["prior-sum-low", "prior-sum-high", "prior-negative", "prior-nan", "prior-inf",
        "log-p-nan", "log-p-pos-inf", "log-p-dead-row", "no-rows", "no-columns",
        "log-p-int", "epsilon-negative", "epsilon-zero", "epsilon-inf", "epsilon-nan",
        "threshold-zero", "threshold-negative", "max-iterations-zero",
        "max-iterations-float", "inner-iterations-zero"])
def test_bad_inputs_are_named(log_p, prior, kwargs, message):
  with pytest.raises(ValueError, match=message):
    estep.pseudo_labels(log_p, prior, **kwargs)


def test_valid_edge_values_are_accepted():
  # -Inf entries (impossible classes) and zero prior mass are legitimate, and the
  # prior only has to sum to 1 within float32 rounding.
  log_p = _with(_LOG_P, (3, slice(1, 4)), -np.inf)
  prior = jnp.asarray([0.5, 0.3, 0.2, 0.0]) * (1 + 5e-5)
  out = estep.pseudo_labels(log_p, prior)
  assert bool(out.converged)
  assert int(out.labels[3]) == 0  # its only possible class
  assert not np.any(np.asarray(out.labels) == 3)  # no mass for class 3


def test_static_checks_still_raise_under_jit():
  with pytest.raises(ValueError, match="epsilon must be > 0"):
    jax.jit(lambda lp, p: estep.pseudo_labels(lp, p, epsilon=-0.1))(_LOG_P, _PRIOR)
  with pytest.raises(ValueError, match="no rows"):
    jax.jit(estep.pseudo_labels)(jnp.zeros((0, 4)), _PRIOR)


def test_valid_inputs_work_under_jit_and_match_eager():
  run = jax.jit(estep.pseudo_labels, static_argnames=("epsilon", "threshold"))
  jitted = run(_LOG_P, _PRIOR, epsilon=EPSILON, threshold=1e-5)
  eager = estep.pseudo_labels(_LOG_P, _PRIOR, epsilon=EPSILON, threshold=1e-5)
  assert bool(jitted.converged)
  np.testing.assert_array_equal(jitted.labels, eager.labels)
  np.testing.assert_allclose(jitted.g, eager.g, atol=1e-5)


def test_bad_values_under_jit_do_not_raise_and_are_not_converged():
  # The documented behaviour: under jit a NaN cannot raise, it only shows up as
  # a non-converged result with a NaN error.
  out = jax.jit(estep.pseudo_labels)(_with(_LOG_P, (3, 1), np.nan), _PRIOR)
  assert not bool(out.converged)
  assert np.isnan(float(out.error))


_STATIC = ("epsilon", "threshold", "max_iterations", "inner_iterations",
           "reference_iterations")


def test_checkify_catches_bad_values_under_jit():
  run = checkify.checkify(jax.jit(estep.checked_pseudo_labels, static_argnames=_STATIC))
  err, out = run(_LOG_P, _PRIOR, threshold=1e-5)
  err.throw()  # valid input: no error
  want = estep.pseudo_labels(_LOG_P, _PRIOR, threshold=1e-5)
  np.testing.assert_array_equal(out.labels, want.labels)
  err, _ = run(_with(_LOG_P, (3, 1), np.nan), _PRIOR, threshold=1e-5)
  with pytest.raises(ValueError, match="log_p has 1 NaN entries"):
    err.throw()
  err, _ = run(_LOG_P, _PRIOR * 0.83, threshold=1e-5)
  with pytest.raises(ValueError, match=r"prior sums to 0\.83"):
    err.throw()


_SHARDED_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from vibe_jax import estep, parallel
assert jax.device_count() == 8
rng = np.random.default_rng(0)
n, k = 8003, 10  # not divisible by 8: padded with 5 zero-mass rows
centres = rng.normal(size=(k, 16))
x = centres[rng.integers(0, k, n)] + rng.normal(size=(n, 16)) * 1.5
log_p = np.asarray(jax.nn.log_softmax(jnp.asarray(x @ centres.T, jnp.float32), axis=1))
prior = jnp.full((k,), 1.0 / k)
one = estep.pseudo_labels(jnp.asarray(log_p), prior)
mesh = parallel.data_mesh()
padded = np.concatenate([log_p, np.zeros((5, k), np.float32)])
rows = jax.device_put(padded, NamedSharding(mesh, P("data", None)))
run = jax.jit(estep.pseudo_labels, static_argnames="num_rows")
out = run(rows, prior, num_rows=n)
memory = run.lower(rows, prior, num_rows=n).compile().memory_analysis()
print(json.dumps({
    "agree": float(np.mean(np.asarray(one.labels) == np.asarray(out.labels)[:n])),
    "spec": str(out.labels.sharding.spec), "argument_bytes": memory.argument_size_in_bytes,
    "iterations": [int(one.iterations), int(out.iterations)]}))
"""


def test_row_sharded_log_p_gives_a_sharded_e_step_with_the_same_labels():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], capture_output=True,
                       text=True, env=env, timeout=300,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.returncode == 0, out.stderr
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["agree"] >= 0.9999 and got["iterations"][0] == got["iterations"][1]
  assert got["spec"] in ("P('data',)", "PartitionSpec('data',)")
  # Each device holds its 8008 / 8 rows of log P (plus the prior), not all of it.
  assert got["argument_bytes"] == 8008 // 8 * 10 * 4 + 10 * 4


def test_num_rows_outside_the_rows_of_log_p_is_refused():
  log_p = jnp.zeros((6, 3))
  prior = jnp.full((3,), 1 / 3)
  for bad in (0, 7):
    with pytest.raises(ValueError, match="num_rows must be in"):
      estep.pseudo_labels(log_p, prior, num_rows=bad)
  padded = estep.pseudo_labels(jnp.concatenate([log_p, jnp.zeros((2, 3))]), prior,
                               num_rows=6)
  assert bool(padded.converged) and padded.labels.shape == (8,)

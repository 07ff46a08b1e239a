"""`pseudo_labels_from_features`: the blocked solver on log P computed block by block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax import estep

_N, _D, _K = 1003, 8, 12


def _data():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(_K, _D)).astype(np.float32)
  y = rng.integers(0, _K, _N).astype(np.int32)
  x = (centres[y] + rng.normal(size=(_N, _D))).astype(np.float32)
  w = jnp.asarray(centres.T)
  # A log-joint with a label term, as VIBE's: log p(l | x) + log p(y | l).
  log_joint = lambda xb, yb: jax.nn.log_softmax(xb @ w, axis=1) + 0.5 * jax.nn.one_hot(yb, _K)
  prior = jnp.full((_K,), 1.0 / _K)
  return log_joint, jnp.asarray(x), jnp.asarray(y), prior


def test_streaming_equals_blocked_on_materialised_log_p():
  log_joint, x, y, prior = _data()
  log_p = estep.dataset_log_joint(log_joint, x, y)
  want = jax.jit(lambda lp: estep.pseudo_labels(lp, prior, solver="blocked",
                                                block_rows=128))(log_p)
  got = jax.jit(lambda a, b: estep.pseudo_labels_from_features(log_joint, a, b, prior,
                                                               block_rows=128))(x, y)
  assert bool(got.converged) and int(got.iterations) == int(want.iterations)
  np.testing.assert_array_equal(got.labels, want.labels)
  np.testing.assert_allclose(got.g, want.g, atol=1e-5)
  np.testing.assert_allclose(got.f, want.f, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"labels": jnp.zeros((5,), jnp.int32)}, "features has 1003 rows but labels has 5"),
    ({"prior": jnp.full((_K,), 0.5)}, "prior sums to 6, not 1"),
    ({"prior": jnp.full((3,), 1 / 3)}, r"prior must have shape \(12,\)"),
    ({"log_joint_fn": lambda xb, yb: xb[:, 0]}, r"log_p must be \(N, K\)"),
    ({"epsilon": 0.0}, "epsilon must be > 0"),
    ({"block_rows": 0}, "block_rows must be >= 1"),
    ({"num_rows": 2000}, r"num_rows must be in \[1, 1003\]"),
])
def test_bad_inputs_are_named(kwargs, message):
  log_joint, x, y, prior = _data()
  args = {"log_joint_fn": log_joint, "features": x, "labels": y, "prior": prior, **kwargs}
  with pytest.raises(ValueError, match=message):
    estep.pseudo_labels_from_features(**args)

"""Small E-step problems shared by the tests of `vibe_jax.estep`."""

import jax.numpy as jnp
import numpy as np

EPSILON = 1.0 / 25.0


def problem(n=300, k=5, seed=0):
  """A random (N, K) log P (rows log-normalised) and a Dirichlet prior."""
  rng = np.random.default_rng(seed)
  logits = 4.0 * rng.normal(size=(n, k)).astype(np.float32)
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  prior = rng.dirichlet(np.full(k, 20.0)).astype(np.float32)
  return jnp.asarray(log_p), jnp.asarray(prior)


def with_value(array, index, value):
  """A copy of `array` with `array[index] = value`."""
  out = np.array(array)
  out[index] = value
  return jnp.asarray(out)

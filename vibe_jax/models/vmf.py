"""The von Mises-Fisher heads of VIBE (spec sections 3.1 to 3.8).

Parameters, named as in the paper's figure:
  mu  (K, D)  clean prototypes of p(l|x)
  eta (K, D)  corrupted prototypes of p(y|l[,x])
  rho (K,)    prior logits; pi = softmax(c * rho)

p(l|x)      = softmax_l(kappa * <v^, mu^_l> + log pi_l)
p(y|l)      = softmax_y(nu * <eta^_y, mu^_l>)                   ("-A", input-agnostic)
p(y|l,x)    = softmax_y(nu * <eta^_y, mu^_l + v>), v not normalised  ("-F")

Deviation from the reference (same numbers, less memory): the reference builds the
(B, K, D) tensor h = mu^ + v and a (B, K, K) logit tensor for "-F". Here the
normaliser logsumexp_y(S[y, l] + u[b, y]) with S = nu eta^ mu^T and u = nu v eta^T is
computed as a shifted exp-matmul-log, so memory stays O(B K + K^2).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "VIBEHead",
    "l2_normalize",
    "class_means",
    "init_head_params",
]

# The head's matmuls are tiny next to a backbone; full float32 keeps them equal to
# the reference on GPUs and TPUs, whose default float32 matmul is lower precision.
_PRECISION = jax.lax.Precision.HIGHEST


def l2_normalize(a: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Returns a / max(||a||_2, eps) along `axis` (torch's F.normalize)."""
  norm = jnp.linalg.norm(a, axis=axis, keepdims=True)
  return a / jnp.maximum(norm, eps)


def _dot_t(a: jax.Array, b: jax.Array) -> jax.Array:
  """Returns a @ b.T in full float32 precision."""
  return jnp.einsum("...d,kd->...k", a, b, precision=_PRECISION)


class VIBEHead(nn.Module):
  """p(l|x) and p(y|l[,x]) of VIBE over D-dimensional features.

  Attributes:
    num_classes: K.
    dim: D, the feature dimension.
    kappa: concentration of p(l|x).
    nu: concentration of the corruption model.
    prior_temperature: c in pi = softmax(c * rho).
    conditioned: False for "-A" p(y|l), True for "-F" p(y|l,x).
  """

  num_classes: int
  dim: int
  kappa: float = 10.0
  nu: float = 10.0
  prior_temperature: float = 0.02
  conditioned: bool = False

  def setup(self):
    k, d = self.num_classes, self.dim
    self.mu = self.param("mu", nn.initializers.normal(1.0), (k, d))
    self.eta = self.param("eta", nn.initializers.normal(1.0), (k, d))
    self.rho = self.param("rho", nn.initializers.normal(1.0), (k,))

  def log_prior(self) -> jax.Array:
    """Returns log pi, shape (K,)."""
    return jax.nn.log_softmax(self.prior_temperature * self.rho)

  def prior(self) -> jax.Array:
    """Returns pi, the learned class prior, shape (K,)."""
    return jax.nn.softmax(self.prior_temperature * self.rho)

  def __call__(self, v: jax.Array) -> jax.Array:
    """Returns log p(l|x), shape (B, K): the test-time prediction."""
    cos = _dot_t(l2_normalize(v), l2_normalize(self.mu))
    return jax.nn.log_softmax(self.kappa * cos + self.log_prior(), axis=-1)

  def log_p_corrupt(self, v: jax.Array, y: jax.Array) -> jax.Array:
    """Returns log p(y_b | l [, x_b]) for every l, shape (B, K).

    Args:
      v: features (B, D), raw (the "-F" model uses them un-normalised).
      y: given labels (B,) ints.
    """
    mu_n, eta_n = l2_normalize(self.mu), l2_normalize(self.eta)
    s = self.nu * _dot_t(eta_n, mu_n)  # (K_y, K_l)
    if not self.conditioned:
      return s[y] - jax.nn.logsumexp(s, axis=0)[None, :]
    u = self.nu * _dot_t(v, eta_n)  # (B, K_y): the input-dependent bias over y
    numerator = s[y] + jnp.take_along_axis(u, y[:, None], axis=1)
    # logsumexp_y (s[y, l] + u[b, y]) without the (B, K, K) tensor; the shifts make
    # every exponent <= 0 and are constants for the gradient.
    u_max = jax.lax.stop_gradient(jnp.max(u, axis=1, keepdims=True))  # (B, 1)
    s_max = jax.lax.stop_gradient(jnp.max(s, axis=0, keepdims=True))  # (1, K_l)
    summed = jnp.matmul(jnp.exp(u - u_max), jnp.exp(s - s_max), precision=_PRECISION)
    return numerator - (jnp.log(summed) + u_max + s_max)

  def log_joint(
      self, v: jax.Array, y: jax.Array, uniform_p_yl: bool | jax.Array = False
  ) -> jax.Array:
    """Returns ln P[b, l] = ln p(l|x_b) + ln p(y_b|l[,x_b]), shape (B, K).

    Args:
      v: features (B, D).
      y: given labels (B,).
      uniform_p_yl: replace the corruption model by log(1/K), as the reference
        does at the first E-step (spec 4.3). A traced boolean is accepted, so that
        the E-step compiles once for the first E-step and the later ones.
    """
    log_p_clean = self(v)
    if isinstance(uniform_p_yl, bool) and uniform_p_yl:
      return log_p_clean - jnp.log(float(self.num_classes))
    corrupt = self.log_p_corrupt(v, y)
    if isinstance(uniform_p_yl, bool):
      return log_p_clean + corrupt
    return log_p_clean + jnp.where(uniform_p_yl, -jnp.log(float(self.num_classes)), corrupt)


def class_means(features: Any, labels: Any, num_classes: int) -> np.ndarray:
  """Mean feature of each class under the given labels (reference `find_centroids`).

  A class with no sample gets a zero prototype rather than NaN.
  """
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  sums = np.zeros((num_classes, features.shape[1]))
  np.add.at(sums, labels, features)
  counts = np.bincount(labels, minlength=num_classes)[:, None]
  return (sums / np.maximum(counts, 1)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=1)
def _standard_normal(rng: jax.Array, size: int) -> jax.Array:
  """N(0, I) of `size` as one program (eagerly, its parts compile one by one)."""
  return jax.random.normal(rng, (size,), jnp.float32)


def init_head_params(
    features: Any, labels: Any, num_classes: int, rng: jax.Array
) -> dict[str, jax.Array]:
  """Initial head parameters as the reference sets them (spec 3.8).

  mu = eta = class means of the features under the given labels; rho ~ N(0, I)
  drawn from `rng` (the reference leaves it unseeded).
  """
  means = class_means(features, labels, num_classes)
  rho = _standard_normal(rng, num_classes)
  # Two buffers: the train step donates its state, and one buffer cannot be donated
  # twice.
  return {"mu": jnp.array(means), "eta": jnp.array(means), "rho": rho}

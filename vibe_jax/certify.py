"""Randomised-smoothing certification against training-time triggers (RAB, Cert-SSBD).

An ensemble of N_m models, each trained on noisy inputs and queried on the test input
plus its own fixed noise, votes a smoothed class distribution; p_A is the mean
probability of the top class and p_B of the runner-up. RAB's theorem then bounds the
l2 size of a trigger added to training inputs that could flip the prediction:

  r = sigma / 2 * (Phi^-1(p_A_lower) - Phi^-1(p_B_upper)),

where p_A_lower = p_A - h and p_B_upper = p_B + h, and the Hoeffding term
h = sqrt(ln(1/alpha) / (2 n)) makes the bound hold with probability 1 - alpha over
the n sampled members. The public Cert-SSB code (`eval.py`) hard-codes n = 1000 even
when it trains 200 members; `hoeffding(alpha, n)` takes the real n and the defense
keeps the reference's constant behind a switch (`cert.hoeffding_members`).

Cert-SSBD gives every example its own sigma_i, raised by gradient ascent on the radius
and stored per example (the storage-update rule, `sigma_step`). The public code
detaches the model's outputs, so its gradient is |gap| / 2 with the outputs held
fixed; `full_sigma_gradient` differentiates through the reparameterised noise too.

Pure NumPy/JAX arithmetic: no model, no data; the defense in
`vibe_jax.defenses.cert_ssbd` wires it to the ensemble.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

__all__ = ["RADII", "hoeffding", "top_two", "radius", "max_radius", "curves", "margin_gap",
           "sigma_step", "full_sigma_gradient"]

# The radii the public code reports at.
RADII = tuple(0.25 * i for i in range(11))

# Clamp of the probabilities inside the sigma update (the public code's 0.02, 0.98):
# keeps Phi^-1 finite where a model is certain.
_CLAMP = 0.02


def hoeffding(alpha: float, members: int) -> float:
  """sqrt(ln(1/alpha) / (2 members)): how far the mean of `members` votes in [0, 1]
  can be from its expectation with probability 1 - alpha."""
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  if members < 1:
    raise ValueError(f"members must be >= 1, got {members}")
  return float(np.sqrt(np.log(1.0 / alpha) / (2.0 * members)))


def top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prediction, p_A, p_B) of smoothed class probabilities (N, K): the top class,
  its probability and the runner-up's."""
  probs = np.asarray(probs, np.float64)
  pred = probs.argmax(1)
  rows = np.arange(len(probs))
  p_a = probs[rows, pred]
  rest = probs.copy()
  rest[rows, pred] = -1.0
  return pred, p_a, rest.max(1)


def _ndtri(p):
  """Phi^-1 in float64 (jax's would be float32), by scipy."""
  # Lazy: scipy.special costs 0.4 s of every run's start; only certification needs it.
  from scipy.special import ndtri  # pylint: disable=g-import-not-at-top
  return ndtri(p)


def radius(p_a: np.ndarray, p_b: np.ndarray, sigma: np.ndarray | float, correction: float
           ) -> np.ndarray:
  """Certified l2 radius per example: sigma / 2 * (Phi^-1(p_A - h) - Phi^-1(p_B + h))
  with h = `correction`, the bounds clipped to [1e-8, 1 - 1e-8] as the public code
  does. Negative where the bounds overlap (nothing certified)."""
  lower = np.maximum(1e-8, np.asarray(p_a, np.float64) - correction)
  upper = np.minimum(1 - 1e-8, np.asarray(p_b, np.float64) + correction)
  gap = _ndtri(lower) - _ndtri(upper)
  return 0.5 * np.asarray(sigma, np.float64) * gap


def max_radius(sigma: float, correction: float) -> float:
  """The largest radius the correction allows: p_A = 1, p_B = 0 gives
  sigma * Phi^-1(1 - h)."""
  return float(sigma * _ndtri(1.0 - correction))


def curves(radii_: np.ndarray, correct: np.ndarray, at: tuple[float, ...] = RADII
           ) -> dict[str, list[float]]:
  """Certified accuracy (share of examples correct and with radius > r), the
  certified ratio (radius > r) and the conditional accuracy (correct among the
  certified; None where none is, so the curves stay valid JSON) at each radius of
  `at`."""
  radii_, correct = np.asarray(radii_), np.asarray(correct, bool)
  acc, ratio, cond = [], [], []
  for r in at:
    certified = radii_ > r
    acc.append(float(np.mean(certified & correct)) if len(correct) else float("nan"))
    ratio.append(float(np.mean(certified)) if len(correct) else float("nan"))
    cond.append(float((certified & correct).sum() / certified.sum())
                if certified.any() else None)
  return {"radius": [float(r) for r in at], "certified_accuracy": acc,
          "certified_ratio": ratio, "conditional_accuracy": cond}


def margin_gap(probs: jax.Array) -> jax.Array:
  """|Phi^-1(p_0) - Phi^-1(p_1)| of binary probabilities (B, 2), each clamped to
  [0.02, 0.98] as in the public code: twice the radius per unit sigma."""
  p = jnp.clip(probs, _CLAMP, 1 - _CLAMP)
  return jnp.abs(norm.ppf(p[:, 0]) - norm.ppf(p[:, 1]))


def sigma_step(sigma: jax.Array, probs: jax.Array, lr: float) -> jax.Array:
  """The public code's storage update: sigma + lr * d/dsigma relu(sigma / 2 * gap)
  with the model's outputs held fixed (they are detached there), i.e.
  sigma + lr * gap / 2. It raises sigma in proportion to the margin and leaves it
  where the smoothed classifier is undecided (gap 0)."""
  return sigma + lr * 0.5 * margin_gap(probs)


def full_sigma_gradient(probs_at: Callable[[jax.Array], jax.Array], sigma: jax.Array
                        ) -> jax.Array:
  """d/dsigma_i of relu(sigma_i / 2 * gap_i(sigma)) where `probs_at(sigma)` gives the
  (B, 2) probabilities at inputs x + sigma * eps (the noise reparameterised, eps
  fixed): the full gradient, which also counts how the margin shrinks as the noise
  grows. Each example's radius depends only on its own sigma, so the gradient of
  the sum is the per-example derivative."""
  def total(s):
    return jnp.sum(jax.nn.relu(0.5 * s * margin_gap(probs_at(s))))
  return jax.grad(total)(sigma)

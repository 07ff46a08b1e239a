"""Certification arithmetic against hand computations (RAB / Cert-SSBD)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vibe_jax import certify


def test_hoeffding_is_the_public_codes_term():
  # sqrt(ln(1 / 0.001) / (2 * 1000)) = sqrt(6.907755 / 2000)
  assert certify.hoeffding(0.001, 1000) == pytest.approx(0.0587693, abs=1e-6)
  assert certify.hoeffding(0.001, 200) > certify.hoeffding(0.001, 1000)
  with pytest.raises(ValueError, match="members"):
    certify.hoeffding(0.001, 0)


def test_radius_matches_a_hand_computation():
  # sigma / 2 * (Phi^-1(0.9 - 0.05) - Phi^-1(0.1 + 0.05)); Phi^-1(0.85) = 1.0364334
  r = certify.radius(np.array([0.9]), np.array([0.1]), 0.5, 0.05)
  assert r[0] == pytest.approx(0.25 * 2 * 1.0364334, abs=1e-6)
  # Per-example sigma scales the radius linearly; overlapping bounds give r < 0.
  r = certify.radius(np.array([0.9, 0.9, 0.52]), np.array([0.1, 0.1, 0.48]),
                     np.array([0.5, 1.0, 1.0]), 0.05)
  assert r[1] == pytest.approx(2 * r[0]) and r[2] < 0


def test_certain_prediction_certifies_the_largest_radius_allowed():
  h = certify.hoeffding(0.001, 100)
  r = certify.radius(np.array([1.0]), np.array([0.0]), 0.12, h)[0]
  assert r == pytest.approx(certify.max_radius(0.12, h))
  # Phi^-1(1 - 0.18585) = 0.8937 for 100 members
  assert r == pytest.approx(0.12 * 0.89366, abs=1e-4)
  assert r > certify.radius(np.array([0.99]), np.array([0.01]), 0.12, h)[0]


def test_top_two_and_curves():
  pred, p_a, p_b = certify.top_two(np.array([[0.2, 0.8], [0.7, 0.3]]))
  assert pred.tolist() == [1, 0] and p_a.tolist() == [0.8, 0.7] and p_b.tolist() == [0.2, 0.3]
  out = certify.curves(np.array([0.3, 0.1, -1.0, 0.6]), np.array([True, True, True, False]),
                       at=(0.0, 0.25, 0.5))
  assert out["certified_accuracy"] == [0.5, 0.25, 0.0]
  assert out["certified_ratio"] == [0.75, 0.5, 0.25]
  assert out["conditional_accuracy"][:2] == [pytest.approx(2 / 3), 0.5]
  assert out["conditional_accuracy"][2] == 0.0


def test_storage_update_raises_sigma_with_the_margin_only():
  sigma = jnp.full((3,), 0.12)
  probs = jnp.array([[0.99, 0.01], [0.5, 0.5], [0.3, 0.7]])
  new = certify.sigma_step(sigma, probs, lr=1e-2)
  # Clamped to 0.98: gap = 2 Phi^-1(0.98) = 4.1075; 0.7: 2 Phi^-1(0.7) = 1.0488
  assert float(new[0] - 0.12) == pytest.approx(1e-2 * 0.5 * 4.10750, rel=1e-4)
  assert float(new[1]) == pytest.approx(0.12)
  assert float(new[2] - 0.12) == pytest.approx(1e-2 * 0.5 * 1.04880, rel=1e-3)


def test_full_gradient_agrees_with_finite_differences():
  eps = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  w = jnp.array([1.5, -0.5, 0.8])

  def probs_at(s):
    p = jax.nn.sigmoid((jnp.ones((4, 3)) * 0.3 + s[:, None] * eps) @ w)
    return jnp.stack([1 - p, p], axis=1)

  sigma = jnp.array([0.1, 0.2, 0.3, 0.4])
  grad = certify.full_sigma_gradient(probs_at, sigma)
  radius = lambda s: 0.5 * s * certify.margin_gap(probs_at(s))
  step = 1e-3
  numeric = (radius(sigma + step) - radius(sigma - step)) / (2 * step)
  np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=1e-3)
  # It differs from the reference's gradient, which holds the outputs fixed.
  assert not np.allclose(grad, 0.5 * certify.margin_gap(probs_at(sigma)), atol=1e-3)

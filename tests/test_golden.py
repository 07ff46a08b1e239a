"""The model, E-step and M-step against the reference's golden values (spec 18)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden
from vibe_jax import estep, mstep
from vibe_jax.train import TrainState
from vibe_jax.models import VIBEHead, VIBEModel, class_means

ATOL = 1e-5
EPSILON = 1.0 / 25.0


def _model(variant):
  return VIBEModel(VIBEHead(3, 4, kappa=10.0, nu=10.0, prior_temperature=0.02,
                            conditioned=variant == "F"))


def _params():
  mu = class_means(golden.V, golden.Y, 3)
  return {"head": {"mu": jnp.asarray(mu), "eta": jnp.asarray(mu),
                   "rho": jnp.asarray(golden.RHO)}}


def test_class_means_are_the_reference_centroids():
  np.testing.assert_allclose(class_means(golden.V, golden.Y, 3), golden.MU, atol=1e-6)


def test_prior_and_clean_posterior():
  model, params = _model("A"), _params()
  np.testing.assert_allclose(
      model.apply({"params": params}, method="prior"), golden.PI, atol=1e-6)
  np.testing.assert_allclose(
      model.apply({"params": params}, golden.V), golden.LOG_P_CLEAN, atol=ATOL)


@pytest.mark.parametrize("variant", ["A", "F"])
def test_first_estep_uses_uniform_corruption_model(variant):
  model, params = _model(variant), _params()
  log_p = model.apply({"params": params}, golden.V, golden.Y, True, method="log_joint")
  np.testing.assert_allclose(log_p, golden.LOG_P_ESTEP0, atol=ATOL)
  prior = model.apply({"params": params}, method="prior")
  result = estep.pseudo_labels(log_p, prior, epsilon=EPSILON, reference_iterations=True)
  np.testing.assert_array_equal(result.labels, golden.PSEUDO)
  assert int(result.iterations) == estep.REFERENCE_ITERATIONS
  plan = estep.transport_log_plan(log_p, result, EPSILON)
  np.testing.assert_allclose(plan[0], golden.LOG_PLAN_ROW0_ESTEP0, rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(plan).sum(0), golden.COLUMN_SUMS_ESTEP0, atol=2e-6)
  np.testing.assert_allclose(jnp.exp(plan).sum(1), np.full(9, 1 / 9), atol=1e-6)


@pytest.mark.parametrize("variant", ["A", "F"])
def test_log_joint_and_reference_sinkhorn(variant):
  want = golden.VARIANTS[variant]
  model, params = _model(variant), _params()
  log_p = model.apply({"params": params}, golden.V, golden.Y, method="log_joint")
  np.testing.assert_allclose(log_p, want["log_p"], atol=ATOL)
  prior = model.apply({"params": params}, method="prior")
  result = estep.pseudo_labels(log_p, prior, epsilon=EPSILON, reference_iterations=True)
  np.testing.assert_array_equal(result.labels, golden.PSEUDO)
  plan = estep.transport_log_plan(log_p, result, EPSILON)
  # Entries of e^-30 barely constrain the potentials, so 10,001 float32 iterations
  # (of values near lambda * 10 = 250) leave them within ~2e-4 relative of torch's.
  np.testing.assert_allclose(plan[0], want["log_plan_row0"], rtol=2e-4)
  np.testing.assert_allclose(jnp.exp(plan).sum(0), prior, atol=3e-6)


@pytest.mark.parametrize("variant", ["A", "F"])
def test_loss_and_gradients(variant):
  want = golden.VARIANTS[variant]
  model, params = _model(variant), _params()

  def loss_fn(p):
    log_p = model.apply({"params": p}, golden.V, golden.Y, method="log_joint")
    return mstep.vibe_loss(log_p, jnp.asarray(golden.PSEUDO))

  loss, grads = jax.value_and_grad(loss_fn)(params)
  np.testing.assert_allclose(loss, want["loss"], atol=ATOL)
  np.testing.assert_allclose(grads["head"]["mu"], want["grad_mu"], atol=ATOL)
  np.testing.assert_allclose(grads["head"]["eta"], want["grad_eta"], atol=ATOL)
  np.testing.assert_allclose(grads["head"]["rho"], want["grad_rho"], atol=ATOL)


@pytest.mark.parametrize("variant", ["A", "F"])
def test_two_sgd_steps_match_torch(variant):
  want = golden.VARIANTS[variant]
  model, params = _model(variant), _params()
  tx = mstep.make_optimizer(
      {"backbone": 1e-3, "mu": 1e-3, "eta": 1e-3, "prior": 0.1},
      momentum=0.9, weight_decay=5e-4)
  state = TrainState.create_for(
      params=params, tx=tx, extra={"pseudo_labels": jnp.asarray(golden.PSEUDO, jnp.int32)})
  step = jax.jit(mstep.make_vibe_step(model))
  batch = {"x": jnp.asarray(golden.V), "y": jnp.asarray(golden.Y),
           "index": jnp.arange(9)}
  for _ in range(2):
    state, metrics = step(state, batch)
  head = state.params["head"]
  np.testing.assert_allclose(head["mu"], want["mu_after2"], atol=ATOL)
  np.testing.assert_allclose(head["eta"], want["eta_after2"], atol=ATOL)
  np.testing.assert_allclose(head["rho"], want["rho_after2"], atol=ATOL)
  assert int(state.step) == 2
  assert np.isfinite(metrics["loss"])

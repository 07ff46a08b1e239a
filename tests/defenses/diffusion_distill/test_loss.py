"""The distillation loss against a hand computation; a student learns its teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import clusters
from vibe_jax.defenses.diffusion_distill.colour import mean_std_transfer
from vibe_jax.defenses.diffusion_distill.loss import distillation_loss, make_student_step
from vibe_jax.config import base_config
from vibe_jax.train import TrainState, build_model


def _softmax(z):
  e = np.exp(z - z.max())
  return e / e.sum()


@pytest.mark.parametrize("scaled_ce", [True, False])
def test_loss_is_the_hand_computation(scaled_ce):
  s = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  t = np.array([[1.0, 3.0, 0.0], [0.0, -2.0, 1.0]])
  y = np.array([0, 1])
  alpha, temp = 0.3, 4.0
  want = 0.0
  for i in range(2):
    ps, pt = _softmax(s[i] / temp), _softmax(t[i] / temp)
    kl = float(np.sum(pt * np.log(pt / ps)))
    ce = -np.log(ps[y[i]] if scaled_ce else _softmax(s[i])[y[i]])
    want += (alpha * temp**2 * kl + (1 - alpha) * ce) / 2
  got = distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), alpha=alpha,
                          temperature=temp, scaled_ce=scaled_ce)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_colour_transfer_is_the_hand_computation():
  image = np.array([[[0, 10, 200]], [[100, 10, 100]]], np.uint8)  # (2, 1, 3)
  reference = np.array([[[50, 60, 70]], [[70, 80, 90]], [[60, 70, 80]]], np.uint8)
  out = mean_std_transfer(image, reference)
  # Red: mean 50, std 50 -> reference mean 60, std sqrt(200/3) = 8.165.
  np.testing.assert_array_equal(out[:, 0, 0], [51, 68])  # 60 -/+ 8.165, truncated
  np.testing.assert_array_equal(out[:, 0, 1], [70, 70])  # flat channel: the reference mean
  np.testing.assert_array_equal(out[:, 0, 2], [88, 71])  # 80 +/- 8.165, truncated


def test_the_student_learns_the_teachers_soft_labels():
  data = clusters(seed=3, k=4, d=12)
  x = jnp.asarray(data.train_features)
  model = build_model(base_config().model, 4, dim=12)
  init = lambda seed: model.init(jax.random.PRNGKey(seed), x[:1])
  teacher = init(1)
  # A teacher that disagrees with the given labels: the student must follow it.
  want = np.argmax(np.asarray(model.apply(teacher, x)), 1)
  assert np.mean(want == data.train_labels) < 0.9
  state = TrainState.create_for(params=init(2)["params"], tx=optax.adam(0.05),
                                extra={"teacher": teacher})
  step = jax.jit(make_student_step(model, alpha=1.0, temperature=2.0, scaled_ce=True))
  y = jnp.asarray(data.train_labels)
  first = None
  for i in range(300):
    state, metrics = step(state, {"x": x, "y": y, "key": jax.random.PRNGKey(i)})
    first = float(metrics["loss"]) if first is None else first
  got = np.argmax(np.asarray(model.apply({"params": state.params}, x)), 1)
  assert float(metrics["loss"]) < 0.2 * first
  assert np.mean(got == want) > 0.95

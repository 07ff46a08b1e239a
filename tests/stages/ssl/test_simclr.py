"""SimCLR: its loss and its step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vibe_jax.data.sources import DATASETS
from vibe_jax.models.backbones import build_backbone
from vibe_jax.stages.ssl.simclr import SimCLR, make_simclr_step, nt_xent
from vibe_jax.train import TrainState


def test_nt_xent_prefers_matching_views():
  z = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
  same = float(nt_xent(z, z + 0.01, 0.2))
  shuffled = float(nt_xent(z, jnp.roll(z, 1, axis=0), 0.2))
  assert same < shuffled


def test_simclr_step_decreases_its_loss_on_a_tiny_batch():
  model = SimCLR(build_backbone("small_cnn"), hidden=64, out=32)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3),
                                                         dtype=np.uint8))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  state = TrainState.create_for(params=variables["params"], tx=optax.adam(1e-3),
                                batch_stats=variables["batch_stats"])
  step = jax.jit(make_simclr_step(model, DATASETS["cifar10"], temperature=0.2))
  key = jax.random.PRNGKey(3)  # the same views every step: the loss must fall
  losses = []
  for _ in range(25):
    state, metrics = step(state, {"key": key, "x": images})
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0]

"""No defense: the baseline step learns the given labels."""

import jax
import jax.numpy as jnp

from vibe_jax import mstep
from vibe_jax.models import VIBEHead, VIBEModel
from vibe_jax.models.backbones import build_backbone
from vibe_jax.train import TrainState


def test_baseline_step_decreases_the_loss_on_a_tiny_batch():
  model = VIBEModel(VIBEHead(num_classes=3, dim=128), backbone=build_backbone("small_cnn"))
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 32, 32, 3))
  y = jnp.arange(12) % 3
  variables = model.init(jax.random.PRNGKey(1), x)
  tx = mstep.make_optimizer({g: 0.05 for g in mstep.GROUPS})
  state = TrainState.create_for(params=variables["params"], tx=tx,
                                batch_stats=variables["batch_stats"])
  step = jax.jit(mstep.make_baseline_step(model))
  losses = []
  for _ in range(15):
    state, metrics = step(state, {"x": x, "y": y, "index": jnp.arange(12)})
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.7 * losses[0]

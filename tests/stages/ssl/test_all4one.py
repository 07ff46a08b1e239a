"""All4One: the step learns, the queue and momentum encoder move; the positional
encoding is the reference's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import image_config
from vibe_jax.data.sources import DATASETS
from vibe_jax.models.backbones import build_backbone
from vibe_jax.stages.ssl import all4one


@pytest.mark.slow
def test_all4one_pretraining_runs_and_learns(tmp_path):
  config = image_config(tmp_path, steps=1)
  c = config.ssl
  c.num_steps, c.batch_size, c.warmup_steps = 30, 16, 1
  c.proj_hidden, c.proj_dim, c.pred_hidden, c.queue_size = 64, 32, 64, 64
  model = all4one.All4One(build_backbone("small_cnn"), 64, 32, 64)
  parts = all4one._parts(c, model, DATASETS["cifar10"], 30)  # pylint: disable=protected-access
  init, step, backbone_of = parts.init, parts.step, parts.backbone_variables
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3),
                                                         dtype=np.uint8))
  state = init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  step = jax.jit(step)
  key = jax.random.PRNGKey(1)
  losses, queues = [], [np.asarray(state.extra["queue"])]
  for _ in range(12):
    state, metrics = step(state, {"key": key, "x": images})
    losses.append(float(metrics["loss"]))
    assert all(np.isfinite(float(v)) for v in metrics.values())
  queues.append(np.asarray(state.extra["queue"]))
  assert int(state.extra["queue_ptr"]) == (12 * 16) % 64  # FIFO of 64
  assert not np.allclose(queues[0], queues[1])
  np.testing.assert_allclose(np.linalg.norm(queues[1], axis=1), 1.0, rtol=1e-5)
  # The momentum encoder trails the online one.
  mom = state.extra["momentum"]["backbone"]["Conv_0"]["kernel"]
  online = state.params["encoder"]["backbone"]["Conv_0"]["kernel"]
  assert not np.allclose(mom, online)
  assert losses[-1] < losses[0]
  assert set(backbone_of(state)) == {"params", "batch_stats"}


def test_all4one_positional_encoding_is_the_permuted_1d_sinusoid():
  pe = all4one.positional_encoding(5, 256)
  assert pe.shape == (5, 256)
  p = np.arange(256)
  np.testing.assert_allclose(pe[0], np.sin(p), atol=1e-6)  # channel 0: sin(p * 1)
  np.testing.assert_allclose(pe[1], np.cos(p), atol=1e-6)
  np.testing.assert_allclose(pe[2], np.sin(p * 10000 ** (-2 / 6)), atol=1e-6)
  np.testing.assert_allclose(pe[4], np.sin(p * 10000 ** (-4 / 6)), atol=1e-6)

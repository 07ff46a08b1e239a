"""Inference compiled once per model and shape, and equal to a direct pass."""

import jax
import jax.numpy as jnp
import numpy as np

from vibe_jax.data.sources import DATASETS
from vibe_jax.models import VIBEHead, VIBEModel
from vibe_jax.models.backbones import build_backbone
from vibe_jax.train import Inference, Inputs


def _model():
  model = VIBEModel(VIBEHead(num_classes=3, dim=128), backbone=build_backbone("small_cnn"))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  return model, variables


def test_embed_and_accuracy_compile_once_for_any_length():
  model, variables = _model()
  inputs = Inputs(DATASETS["cifar10"])
  inference = Inference(model, inputs, batch_size=16)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 50).astype(np.int32)
  features = inference.embed(variables, images)  # 4 batches, the last one padded
  inference.embed(variables, images[:20])
  direct = model.apply(variables, inputs.eval(jnp.asarray(images)), method="embed")
  np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-5)
  predicted = np.argmax(np.asarray(model.apply(variables, inputs.eval(jnp.asarray(images)))),
                        axis=1)
  for n in (50, 33, 16):
    want = float(np.mean(predicted[:n] == labels[:n]))
    assert abs(inference.accuracy(variables, images[:n], labels[:n]) - want) < 1e-9
  # One program each, whatever the lengths (the padding keeps one batch shape).
  assert inference._embed._cache_size() == 1  # pylint: disable=protected-access
  assert inference._correct._cache_size() == 1  # pylint: disable=protected-access
  assert np.isnan(inference.accuracy(variables, None, None))

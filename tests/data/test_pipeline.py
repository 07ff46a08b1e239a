"""Grain pipelines: training batches are a function of (seed, step); evaluation
keeps order."""

import numpy as np
import pytest

from vibe_jax import attacks
from vibe_jax.data import pipeline, sources
from vibe_jax.data.poisoned import CleanSet, TriggeredTestSet, poison_train_set


@pytest.mark.parametrize("attack", attacks.names())
def test_train_pipeline_is_a_function_of_seed_and_step(attack):
  rng = np.random.default_rng(0)
  source = sources.ArraySource(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                               np.arange(40) % 4)
  info = sources.DATASETS["cifar10"]
  params = dict(num_classes=4, rate=0.25, seed=5)
  train = poison_train_set(source, attacks.build(attack, **params))
  a = pipeline.train_pipeline(train, info, batch_size=8, seed=1)
  # A second, independent instance: new source, attack and pipeline objects.
  again = sources.ArraySource(source.images(range(40)).copy(), np.arange(40) % 4)
  b = pipeline.train_pipeline(poison_train_set(again, attacks.build(attack, **params)),
                              info, batch_size=8, seed=1)
  for step in (0, 4, 7):  # 7 is in the second epoch
    for key in ("image", "label", "index", "poisoned", "true_label"):
      np.testing.assert_array_equal(a[step][key], b[step][key])
  batch = a[0]
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  # One epoch visits every index once.
  seen = np.concatenate([a[s]["index"] for s in range(5)])
  assert sorted(seen.tolist()) == list(range(40))
  c = pipeline.train_pipeline(train, info, batch_size=8, seed=2)
  assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_eval_pipeline_keeps_order_and_normalises():
  images = np.full((5, 32, 32, 3), 255, np.uint8)
  source = sources.ArraySource(images, np.arange(5))
  info = sources.DATASETS["cifar10"]
  batches = list(pipeline.eval_pipeline(CleanSet(source), info, batch_size=2))
  assert [len(b["index"]) for b in batches] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), range(5))
  want = (1.0 - 0.4914) / 0.247
  np.testing.assert_allclose(batches[0]["image"][0, 0, 0, 0], want, rtol=1e-6)
  asr = TriggeredTestSet(source, attacks.build("blend", target=0, num_classes=5))
  assert len(list(pipeline.eval_pipeline(asr, info, batch_size=10))[0]["index"]) == 4

"""grain input pipelines over poisoned datasets (no TensorFlow).

`train_pipeline` shuffles per epoch from the seed, poisons (inside the dataset),
augments, normalises and batches; batch `t` is a pure function of (seed, t), so a
resumed run reads the batches an uninterrupted one would. `eval_pipeline` applies
the test transform in order.
"""

from typing import Any, Sequence

import grain
import numpy as np

from vibe_jax.data import augment
from vibe_jax.data.sources import DatasetInfo

__all__ = ["train_pipeline", "eval_pipeline", "collate"]


def collate(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks a list of example dicts into a batch dict of arrays (ints as int32)."""
  batch = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
  return {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in batch.items()}


class _TrainTransform(grain.transforms.RandomMap):
  """Augmentation after poisoning, then normalisation."""

  def __init__(self, info: DatasetInfo, augment_images: bool):
    self.info, self.augment_images = info, augment_images

  def random_map(self, example, rng):
    image = example["image"]
    if self.augment_images:
      image = (augment.pad_crop_flip(image, rng) if self.info.small else
               augment.random_resized_crop_flip(image, rng, self.info.image_size))
    elif not self.info.small:
      image = augment.resize_center_crop(image, size=self.info.image_size)
    return {**example, "image": augment.normalize(image, self.info.mean, self.info.std)}


class _EvalTransform(grain.transforms.Map):
  """The test transform, then normalisation."""

  def __init__(self, info: DatasetInfo):
    self.info = info

  def map(self, example):
    image = example["image"]
    if not self.info.small:
      image = augment.resize_center_crop(image, size=self.info.image_size)
    return {**example, "image": augment.normalize(image, self.info.mean, self.info.std)}


def train_pipeline(dataset: Any, info: DatasetInfo, *, batch_size: int, seed: int,
                   augment_images: bool = True) -> grain.MapDataset:
  """Endless shuffled, augmented batches; `pipeline[t]` is batch t."""
  return (grain.MapDataset.source(dataset).seed(seed).shuffle().repeat()
          .random_map(_TrainTransform(info, augment_images))
          .batch(batch_size, drop_remainder=True, batch_fn=collate))


def eval_pipeline(dataset: Any, info: DatasetInfo, *, batch_size: int) -> grain.MapDataset:
  """One ordered pass with the test transform; the last batch may be short."""
  return (grain.MapDataset.source(dataset).map(_EvalTransform(info))
          .batch(batch_size, drop_remainder=False, batch_fn=collate))

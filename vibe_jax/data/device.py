"""Whole poisoned datasets as arrays, and augmentation inside jit.

CIFAR-sized data fits in accelerator memory as uint8 (150 MB for CIFAR-10), so the
training steps keep it there and augment on the device: a host pipeline would need
6 to 8 cores per GPU (benchmarks/pipeline.py). Poisoning is a pure function of
(pixels, index, seed), so it is applied once when the arrays are built, with the
same `attack.apply` the host pipeline uses; augmentation (after poisoning, as the
reference) runs in the jitted step from a per-step key.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vibe_jax.data.poisoned import PoisonedTrainSet, TriggeredTestSet
from vibe_jax.data.sources import DatasetInfo, ImageSource

__all__ = ["ImageArrays", "train_arrays", "clean_arrays", "triggered_arrays", "augment",
           "random_resized_crop_flip",
           "normalize"]


class ImageArrays(NamedTuple):
  """uint8 images (N, H, W, 3) with their labels (and, for training, the truth)."""

  images: np.ndarray
  labels: np.ndarray
  true_labels: np.ndarray
  poisoned: np.ndarray


def _decode_all(source: ImageSource, indices: np.ndarray, chunk: int = 4096) -> np.ndarray:
  return np.concatenate([source.images(indices[i:i + chunk])
                         for i in range(0, len(indices), chunk)])


def train_arrays(train: PoisonedTrainSet) -> ImageArrays:
  """The poisoned training set (covers included) as arrays, before augmentation."""
  images = _decode_all(train.source, np.arange(len(train)))
  triggered = np.flatnonzero(train.poisoned | train.covered)
  if len(triggered):
    images[triggered] = train.attack.apply(images[triggered], triggered)
  return ImageArrays(images, train.given_labels.astype(np.int32),
                     train.true_labels.astype(np.int32), train.poisoned.copy())


def clean_arrays(source: ImageSource) -> ImageArrays:
  """A clean split as arrays (the ACC set)."""
  labels = source.labels.astype(np.int32)
  return ImageArrays(_decode_all(source, np.arange(len(source))), labels, labels,
                     np.zeros(len(labels), bool))


def triggered_arrays(test: TriggeredTestSet) -> ImageArrays:
  """The ASR set as arrays: every image triggered, labelled by the attack."""
  images = _decode_all(test.source, test.indices)
  images = test.attack.apply_test(images, test.indices)
  return ImageArrays(images, test.labels, test.source.labels[test.indices].astype(np.int32),
                     np.ones(len(test.indices), bool))


def normalize(images: jax.Array, info: DatasetInfo) -> jax.Array:
  """uint8 -> float32 (x / 255 - mean) / std."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(info.mean)) / jnp.asarray(info.std)


def _pad_crop_flip(key: jax.Array, image: jax.Array, pad: int = 4) -> jax.Array:
  h, w, _ = image.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
  out = jax.lax.dynamic_slice(padded, (top, left, 0), (h, w, image.shape[2]))
  return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)


def random_resized_crop_flip(key: jax.Array, image: jax.Array, size: int,
                              scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> jax.Array:
  """RandomResizedCrop (one draw, clipped to the image, bilinear) and a flip."""
  h, w, c = image.shape
  k_area, k_ratio, k_top, k_left, k_flip = jax.random.split(key, 5)
  area = h * w * jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (), minval=np.log(ratio[0]),
                                      maxval=np.log(ratio[1])))
  cw = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
  ch = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
  top = jax.random.uniform(k_top, ()) * (h - ch)
  left = jax.random.uniform(k_left, ()) * (w - cw)
  sy, sx = size / ch, size / cw
  out = jax.image.scale_and_translate(image, (size, size, c), (0, 1),
                                      jnp.stack([sy, sx]), jnp.stack([-top * sy, -left * sx]),
                                      method="linear", antialias=False)
  return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)


def augment(key: jax.Array, images: jax.Array, info: DatasetInfo) -> jax.Array:
  """Training augmentation of a uint8 batch, then normalisation (spec 10.2)."""
  keys = jax.random.split(key, images.shape[0])
  if info.small:
    out = jax.vmap(_pad_crop_flip)(keys, images)
  else:
    out = jax.vmap(lambda k, x: random_resized_crop_flip(k, x.astype(jnp.float32),
                                                          info.image_size))(keys, images)
    out = jnp.clip(out, 0, 255)
  return normalize(out, info)

"""Host-side augmentations."""

import numpy as np

from vibe_jax.data import augment


def test_augmentations_keep_shapes_and_content():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  out = augment.pad_crop_flip(image, np.random.default_rng(1))
  assert out.shape == (32, 32, 3)
  # Every output is a shifted (maybe flipped) window of the zero-padded image.
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  windows = [padded[t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
  assert any(np.array_equal(out, w) or np.array_equal(out, w[:, ::-1]) for w in windows)
  big = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
  assert augment.random_resized_crop_flip(big, rng).shape == (224, 224, 3)
  assert augment.resize_center_crop(big).shape == (224, 224, 3)

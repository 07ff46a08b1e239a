"""Mean/std colour transfer: a generated image takes its source's colour statistics.

The reference (`generate_variations.py`, `python_color_transfer`'s
`mean_std_transfer`) maps each channel of the variation to the source's mean and
standard deviation over the image's pixels, clipped to [0, 255] and truncated to
uint8. Written here in NumPy (the package would pull OpenCV in for one formula).
"""

import numpy as np

__all__ = ["mean_std_transfer"]


def mean_std_transfer(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """`image` (H, W, C) uint8 with each channel moved to `reference`'s per-channel
  mean and standard deviation (`reference` may have another size)."""
  x = image.astype(np.float64)
  ref = reference.astype(np.float64)
  mean, std = x.mean(axis=(0, 1), keepdims=True), x.std(axis=(0, 1), keepdims=True)
  ref_mean, ref_std = ref.mean(axis=(0, 1), keepdims=True), ref.std(axis=(0, 1), keepdims=True)
  # A flat channel has no spread to rescale: it takes the reference's mean only.
  out = np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0) * ref_std, 0.0) + ref_mean
  return np.clip(out, 0, 255).astype(np.uint8)

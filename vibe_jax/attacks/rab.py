"""The RAB / Cert-SSB triggers: small L2-bounded additive perturbations.

The public RAB and Cert-SSB code poisons binary tasks (CIFAR-10 airplane vs bird,
MNIST 0 vs 1) with three triggers, computed on float images in [0, 1] (C, H, W);
`delta` is the trigger's L2 norm in those units:

- one-pixel: at pixel (15, 15) (CIFAR; 23, 23 for 28 px MNIST, 112, 112 for 224 px
  ImageNet), every channel x = min(x + delta / sqrt(3), 1);
- four-pixel: at (14, 16), (15, 15), (16, 14), (16, 16), every channel
  x = min(x + delta / sqrt(12), 1);
- blending: a fixed Gaussian pattern, scaled to L2 norm delta over the whole
  image, added without clipping.

It poisons 2% of the training set, non-target examples relabelled to class 0:
here the all-to-one attack with target=0 and rate=0.02 (these attacks' default).

Differences from the reference:
- The pixel position defaults to size // 2 - 1 (the reference's CIFAR (15, 15)
  scaled to the image: 3 for the 8 px sklearn digits); `row` / `col` move it.
- Blending's pattern comes from the attack's `seed` through numpy `default_rng`,
  not the reference's legacy `np.random.seed(0); randn(3, H, W)`.
- Our images are uint8: the trigger is computed in float32 on x / 255, then
  rounded to the nearest uint8 and clipped to [0, 255]. The realised L2 norm so
  differs slightly from delta; most for blending, whose per-pixel change
  (~delta / sqrt(3 H W), 4.6 levels of 255 at 32 px) is near the rounding step,
  and wherever clipping cuts the pattern (the reference does not clip).
"""

import dataclasses
import functools
import math
from typing import ClassVar

import numpy as np

from vibe_jax.attacks.base import Attack, register

__all__ = ["RabOnePixel", "RabFourPixel", "RabBlending"]


def _to_uint8(x: np.ndarray) -> np.ndarray:
  """float32 images in [0, 1] units -> the nearest uint8 values."""
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class _RabPixels(Attack):
  """Shared by the pixel triggers: `offsets` around (row, col), each channel of
  each pixel raised by delta / sqrt(3 * len(offsets)) and capped at 1."""

  rate: float = 0.02
  delta: float = 1.0
  row: int = -1
  col: int = -1

  # (row, col) offsets of the trigger's pixels from (row, col).
  offsets: ClassVar[tuple[tuple[int, int], ...]] = ((0, 0),)

  def __post_init__(self):
    """Checks delta and that every trigger pixel lies inside the image."""
    super().__post_init__()
    if self.delta < 0:
      raise ValueError(f"attack {self.name!r}: delta must be >= 0, got {self.delta}")
    for r, c in self.pixels:
      if not (0 <= r < self.image_size and 0 <= c < self.image_size):
        raise ValueError(f"attack {self.name!r}: trigger pixel ({r}, {c}) is outside the "
                         f"{self.image_size} px image; choose row / col (-1 = "
                         f"{self.image_size // 2 - 1})")

  @property
  def pixels(self) -> tuple[tuple[int, int], ...]:
    """The (row, col) of every trigger pixel."""
    centre = self.image_size // 2 - 1  # the reference's (15, 15) at 32 px
    r = centre if self.row < 0 else self.row
    c = centre if self.col < 0 else self.col
    return tuple((r + dr, c + dc) for dr, dc in self.offsets)

  def apply(self, images, indices):
    self.check_images(images)
    rows, cols = (np.asarray(a) for a in zip(*self.pixels))
    step = np.float32(self.delta / math.sqrt(3 * len(self.offsets)))
    x = images[:, rows, cols].astype(np.float32) / np.float32(255.0)
    out = images.copy()  # only the trigger pixels go through float and back
    out[:, rows, cols] = _to_uint8(np.minimum(x + step, np.float32(1.0)))
    return out


@register("rab_onepixel")
@dataclasses.dataclass(frozen=True)
class RabOnePixel(_RabPixels):
  """RAB's one-pixel trigger: x = min(x + delta / sqrt(3), 1) at (row, col).

  Attributes:
    delta: the trigger's L2 norm in [0, 1] pixel units.
    row / col: the pixel; -1 = image_size // 2 - 1 (15 at 32 px, as the reference).
  """


@register("rab_fourpixel")
@dataclasses.dataclass(frozen=True)
class RabFourPixel(_RabPixels):
  """RAB's four-pixel trigger: x = min(x + delta / sqrt(12), 1) at (r-1, c+1),
  (r, c), (r+1, c-1), (r+1, c+1), with (r, c) = (row, col).

  Attributes:
    delta: the trigger's L2 norm in [0, 1] pixel units.
    row / col: (r, c); -1 = image_size // 2 - 1 (15 at 32 px, as the reference).
  """

  offsets: ClassVar[tuple[tuple[int, int], ...]] = ((-1, 1), (0, 0), (1, -1), (1, 1))


@register("rab_blending")
@dataclasses.dataclass(frozen=True)
class RabBlending(Attack):
  """RAB's blending trigger: x + p, p a fixed Gaussian pattern of L2 norm delta.

  Attributes:
    delta: the pattern's L2 norm in [0, 1] pixel units, over the whole image.
  """

  rate: float = 0.02
  delta: float = 1.0

  def __post_init__(self):
    """Checks delta."""
    super().__post_init__()
    if self.delta < 0:
      raise ValueError(f"attack {self.name!r}: delta must be >= 0, got {self.delta}")

  @functools.cached_property
  def pattern(self) -> np.ndarray:
    """(H, W, 3) float32 pattern in [0, 1] units, L2 norm delta."""
    # Salted, so that the pattern is not the poisoned-index permutation's stream.
    rng = np.random.default_rng((self.seed, 0x2AB))
    noise = rng.standard_normal((self.image_size, self.image_size, 3))
    return (noise * (self.delta / np.linalg.norm(noise))).astype(np.float32)

  def apply(self, images, indices):
    self.check_images(images)
    x = images.astype(np.float32) / np.float32(255.0)
    return _to_uint8(x + self.pattern[None])

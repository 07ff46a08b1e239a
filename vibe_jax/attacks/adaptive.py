"""Adaptive-Blend and Adaptive-Patch (Qi et al., ICLR 2023; spec 11.7).

Both poison few examples (rate 0.01) and add as many "cover" examples (cover_rate
0.01) that carry a trigger but keep their label, to blur the latent separation of
poisoned and clean examples that many defenses rely on. The reference reads them
pre-generated; here they are generated on the fly, the per-example randomness drawn
from (seed, index):

- adap_blend: a blend trigger (alpha 0.2) cut into a 4 x 4 grid of pieces, of
  which a random half is masked out for each training example; the test trigger is
  the whole blend.
- adap_patch: four patch triggers, each training example gets one of them (chosen
  from (seed, index)) with its own opacity (0.5, 0.2, 0.5, 0.3, as the public
  toolbox); the test trigger pastes two of them at full opacity.

The toolbox's trigger images (Hello Kitty, Firefox and Phoenix logos) do not ship
here: the blend trigger is the seeded grey noise of `blend`, and the four patches are
procedural (a multi-coloured square, a ring, a checkerboard and a cross in the four
corners), scaled with the image; `trigger_path` replaces the blend trigger.
"""

import dataclasses
import functools
import math
from typing import Optional

import numpy as np

from vibe_jax.attacks.base import Attack, load_trigger_image, register
from vibe_jax.attacks.blend import grey_noise_trigger

__all__ = ["AdaptiveBlend", "AdaptivePatch"]


def _mix(images: np.ndarray, trigger: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """round(x + w (t - x)) in uint8; `weight` broadcasts over (B, H, W, 1)."""
  x = images.astype(np.float32)
  out = x + weight * (trigger.astype(np.float32) - x)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _example_rng(seed: int, tag: int, index) -> np.random.Generator:
  return np.random.default_rng((seed, tag, int(index)))


@register("adap_blend")
@dataclasses.dataclass(frozen=True)
class AdaptiveBlend(Attack):
  """Adaptive-Blend.

  Attributes:
    alpha: training opacity; test_alpha: test opacity.
    pieces: the trigger is cut into this many square pieces (a square number).
    mask_rate: share of the pieces masked out in each training example.
    trigger_path: optional RGB blend trigger.
  """

  rate: float = 0.01
  cover_rate: float = 0.01
  alpha: float = 0.2
  test_alpha: float = 0.2
  pieces: int = 16
  mask_rate: float = 0.5
  trigger_path: Optional[str] = None

  def __post_init__(self):
    super().__post_init__()
    side = math.isqrt(self.pieces)
    if side * side != self.pieces or self.image_size % side:
      raise ValueError(f"adap_blend pieces={self.pieces} must be a square whose side "
                       f"divides the image size {self.image_size}")

  @functools.cached_property
  def trigger(self) -> np.ndarray:
    """(H, W, 3) uint8 blend trigger."""
    loaded = load_trigger_image(self.trigger_path, self.image_size)
    return grey_noise_trigger(self.seed, self.image_size) if loaded is None else loaded

  def piece_mask(self, index) -> np.ndarray:
    """(H, W) 0/1 mask of example `index`: a random half of the pieces is 0."""
    side = math.isqrt(self.pieces)
    step = self.image_size // side
    hidden = _example_rng(self.seed, 0xADB, index).choice(
        self.pieces, size=round(self.mask_rate * self.pieces), replace=False)
    mask = np.ones((side, side), np.float32)
    mask[hidden // side, hidden % side] = 0.0
    return np.kron(mask, np.ones((step, step), np.float32))

  def apply(self, images, indices):
    self.check_images(images)
    masks = np.stack([self.piece_mask(i) for i in indices])[..., None]
    return _mix(images, self.trigger[None], self.alpha * masks)

  def apply_test(self, images, indices):
    self.check_images(images)
    return _mix(images, self.trigger[None], np.float32(self.test_alpha))


def _patches(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Four procedural (mark, mask) patch triggers, one per corner, for size x size."""
  scale = max(1, size // 32)
  side = 5 * scale
  marks, masks = [], []
  for corner in range(4):
    mark = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.float32)
    rows = slice(1 * scale, 1 * scale + side) if corner < 2 else slice(size - 6 * scale,
                                                                       size - scale)
    cols = slice(1 * scale, 1 * scale + side) if corner % 2 == 0 else slice(
        size - 6 * scale, size - scale)
    yy, xx = np.mgrid[0:side, 0:side] // scale
    if corner == 0:  # a multi-coloured square
      tile = np.stack([(yy * 60) % 256, (xx * 50 + 80) % 256, ((yy + xx) * 40) % 256], -1)
      shape = np.ones((side, side), bool)
    elif corner == 1:  # a white ring
      tile = np.full((side, side, 3), 255)
      shape = (yy == 0) | (yy == 4) | (xx == 0) | (xx == 4)
    elif corner == 2:  # a black-and-white checkerboard
      tile = np.repeat((((yy + xx) % 2) * 255)[..., None], 3, axis=2)
      shape = np.ones((side, side), bool)
    else:  # a red cross
      tile = np.zeros((side, side, 3))
      tile[..., 0] = 255
      shape = (yy == 2) | (xx == 2)
    mark[rows, cols] = tile.astype(np.uint8)
    mask[rows, cols] = shape
    marks.append(mark)
    masks.append(mask)
  return list(zip(marks, masks))


@register("adap_patch")
@dataclasses.dataclass(frozen=True)
class AdaptivePatch(Attack):
  """Adaptive-Patch.

  Attributes:
    alphas: opacity of each of the four training patches.
    test_patches: which patches the test trigger pastes; test_alpha: their opacity.
  """

  rate: float = 0.01
  cover_rate: float = 0.01
  alphas: tuple[float, ...] = (0.5, 0.2, 0.5, 0.3)
  test_patches: tuple[int, ...] = (0, 2)
  test_alpha: float = 1.0

  @functools.cached_property
  def patches(self) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(mark (H, W, 3) uint8, mask (H, W) 0/1)] of the four patches."""
    return _patches(self.image_size)

  def patch_of(self, index) -> int:
    """Which training patch example `index` carries."""
    return int(_example_rng(self.seed, 0xADA, index).integers(len(self.alphas)))

  def apply(self, images, indices):
    self.check_images(images)
    out = images.copy()
    for row, index in enumerate(indices):
      j = self.patch_of(index)
      mark, mask = self.patches[j]
      out[row] = _mix(images[row:row + 1], mark[None],
                      (self.alphas[j] * mask)[None, ..., None])[0]
    return out

  def apply_test(self, images, indices):
    self.check_images(images)
    out = images
    for j in self.test_patches:
      mark, mask = self.patches[j]
      out = _mix(out, mark[None], (self.test_alpha * mask)[None, ..., None])
    return out

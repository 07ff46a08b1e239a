"""Blend (spec 11.4): x' = (1 - alpha) x + alpha t, alpha = 0.1.

The reference blends `hello_kitty.png` (CIFAR) or a grey random-noise image
(ImageNet); no third-party image ships here. The default trigger is grey uniform
noise in 0..254 drawn from the attack's seed (the reference's ImageNet trigger is of
this kind); `trigger_path` blends any RGB image the user passes instead.
"""

import dataclasses
import functools
from typing import Optional

import numpy as np

from vibe_jax.attacks.base import Attack, load_trigger_image, register

__all__ = ["Blend", "blend", "grey_noise_trigger"]


def blend(images: np.ndarray, trigger: np.ndarray, alpha: float) -> np.ndarray:
  """uint8(255 * ((1 - alpha) x + alpha t)) with x, t in [0, 1], truncating as the
  reference's float32 -> uint8 cast."""
  x = images.astype(np.float32) / 255.0
  t = trigger.astype(np.float32) / 255.0
  mixed = 255.0 * ((1.0 - np.float32(alpha)) * x + np.float32(alpha) * t)
  return np.clip(mixed, 0, 255).astype(np.uint8)


def grey_noise_trigger(seed: int, size: int) -> np.ndarray:
  """(size, size, 3) uint8 grey uniform noise in 0..254 drawn from `seed`."""
  rng = np.random.default_rng((seed, 0xB1E4D))
  return np.repeat(rng.integers(0, 255, (size, size, 1), dtype=np.uint8), 3, axis=2)


@register("blend")
@dataclasses.dataclass(frozen=True)
class Blend(Attack):
  """All-to-one blend.

  Attributes:
    alpha: blend ratio.
    trigger_path: optional RGB image, resized (bicubic) to the image size.
  """

  alpha: float = 0.1
  trigger_path: Optional[str] = None

  @functools.cached_property
  def trigger(self) -> np.ndarray:
    """(H, W, 3) uint8 trigger."""
    loaded = load_trigger_image(self.trigger_path, self.image_size)
    return grey_noise_trigger(self.seed, self.image_size) if loaded is None else loaded

  def apply(self, images, indices):
    self.check_images(images)
    return blend(images, self.trigger[None], self.alpha)

"""FTrojan (spec 11.6): a fixed bump on DCT coefficients of the chroma channels.

The reference loads BackdoorBench's pre-generated images; this generates them: RGB
to YCrCb (the ITU-R BT.601 formulas OpenCV uses), an orthonormal 2-D DCT-II on each
`window` x `window` block of the chosen channels, `magnitude` added at each position
of `positions` in every block, inverse DCT, back to RGB, rounded and clipped to
uint8. Defaults are BackdoorBench's CIFAR-10 settings as the spec reports them
(channels Cr and Cb, window 32, position (31, 31), magnitude 50) [spec: EXT,
unverified]; the FTrojan paper's code also bumps (15, 15).
"""

import dataclasses

import numpy as np

from vibe_jax.attacks.base import Attack, register

__all__ = ["FTrojan", "rgb_to_ycrcb", "ycrcb_to_rgb"]


def rgb_to_ycrcb(rgb: np.ndarray) -> np.ndarray:
  """float (..., 3) RGB in 0..255 -> Y, Cr, Cb (OpenCV's COLOR_RGB2YCrCb)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  y = 0.299 * r + 0.587 * g + 0.114 * b
  return np.stack([y, (r - y) * 0.713 + 128.0, (b - y) * 0.564 + 128.0], axis=-1)


def ycrcb_to_rgb(ycc: np.ndarray) -> np.ndarray:
  """Inverse of `rgb_to_ycrcb` (OpenCV's COLOR_YCrCb2RGB)."""
  y, cr, cb = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
  return np.stack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb], axis=-1)


@register("ftrojan")
@dataclasses.dataclass(frozen=True)
class FTrojan(Attack):
  """All-to-one FTrojan.

  Attributes:
    channels: YCrCb channels that carry the trigger (1 = Cr, 2 = Cb).
    window: DCT block side.
    positions: (row, column) DCT coefficients bumped in each block.
    magnitude: the bump.
  """

  channels: tuple[int, ...] = (1, 2)
  window: int = 32
  positions: tuple[tuple[int, int], ...] = ((31, 31),)
  magnitude: float = 50.0

  def apply(self, images, indices):
    self.check_images(images)
    b, h, w, _ = images.shape
    if h % self.window or w % self.window:
      raise ValueError(f"ftrojan window {self.window} must divide the image size {h}")
    # Lazy: scipy.fft costs 0.5 s of every run's start, and only this attack uses it.
    from scipy import fft  # pylint: disable=g-import-not-at-top

    ycc = rgb_to_ycrcb(images.astype(np.float64))
    n = self.window
    # (B, H/n, n, W/n, n, C): each block's 2-D DCT over axes 2 and 4.
    blocks = ycc.reshape(b, h // n, n, w // n, n, 3)
    coeffs = fft.dctn(blocks, type=2, norm="ortho", axes=(2, 4))
    for row, col in self.positions:
      coeffs[:, :, row, :, col, list(self.channels)] += self.magnitude
    blocks = fft.idctn(coeffs, type=2, norm="ortho", axes=(2, 4))
    rgb = ycrcb_to_rgb(blocks.reshape(b, h, w, 3))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)

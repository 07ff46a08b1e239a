"""Augmentation after poisoning and per-dataset normalisation (spec 10.2), in NumPy.

CIFAR-style: zero-pad 4, random 32x32 crop, horizontal flip with probability 0.5.
ImageNet-style: RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3) and flip for
training; Resize(256) + CenterCrop(224) for testing.
"""

import math

import numpy as np
from PIL import Image

__all__ = ["pad_crop_flip", "random_resized_crop_flip", "resize_center_crop", "normalize"]


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """CIFAR training augmentation of one uint8 (H, W, 3) image."""
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  out = padded[top:top + h, left:left + w]
  return out[:, ::-1] if rng.random() < 0.5 else out


def random_resized_crop_flip(image: np.ndarray, rng: np.random.Generator, size: int = 224,
                             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop (10 tries, then a centre crop) and a flip."""
  h, w, _ = image.shape
  area = h * w
  box = None
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      box = (left, top, left + cw, top + ch)
      break
  if box is None:  # fall back to a centre crop at the clamped aspect ratio
    in_ratio = w / h
    if in_ratio < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
      ch, cw = h, int(round(h * ratio[1]))
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    box = (left, top, left + cw, top + ch)
  out = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box))
  return out[:, ::-1] if rng.random() < 0.5 else out


def resize_center_crop(image: np.ndarray, resize: int = 256, size: int = 224) -> np.ndarray:
  """Resize the shorter side to `resize`, then a centre `size` crop (test time)."""
  h, w, _ = image.shape
  scale = resize / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
  top, left = (nh - size) // 2, (nw - size) // 2
  return resized[top:top + size, left:left + size]


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 images -> float32 (x / 255 - mean) / std, channels last."""
  x = images.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)

"""How stored inputs become model inputs, in training and in evaluation."""

import dataclasses
from typing import Any, Callable, Optional

import jax

from vibe_jax.data import device
from vibe_jax.data.sources import DatasetInfo

__all__ = ["Inputs", "NORMALIZATIONS", "inputs_for"]

# config.model.input_norm -> (mean, std) that a pretrained backbone's weights expect,
# overriding the dataset's. "inception" maps pixels to [-1, 1] (TensorFlow's
# EfficientNet-Lite: (x - 127) / 128); "imagenet" is torchvision's.
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Identity for feature vectors; for uint8 images, augmentation (training) or
  normalisation (evaluation), then, with `resize`, a bilinear resize to
  resize x resize (the reference feeds CIFAR to DINOv2 this way: normalised, then
  resized to 224, spec 8.3).

  Attributes:
    info: the image dataset's description; None for feature vectors.
    resize: > 0: the side images are resized to after normalisation.
  """

  info: Optional[DatasetInfo] = None
  resize: int = 0

  def _sized(self, x: jax.Array) -> jax.Array:
    if not self.resize or x.shape[1] == self.resize:
      return x
    return jax.image.resize(x, (x.shape[0], self.resize, self.resize, x.shape[3]),
                            "bilinear", antialias=False)

  def train(self, key: jax.Array, x: jax.Array) -> jax.Array:
    """A training batch: augmented from `key` (images) or as is (features)."""
    return x if self.info is None else self._sized(device.augment(key, x, self.info))

  def eval(self, x: jax.Array) -> jax.Array:
    """An evaluation batch: normalised, never augmented."""
    return x if self.info is None else self._sized(device.normalize(x, self.info))

  def augmenting(self, step_fn: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
    """`step_fn` with batch["x"] prepared by `train` from batch["key"] first."""
    if self.info is None:
      return step_fn
    return lambda state, batch: step_fn(
        state, {**batch, "x": self.train(batch["key"], batch["x"])})


def inputs_for(model_config: Any, info: Optional[DatasetInfo], images: bool = True) -> Inputs:
  """The `Inputs` of a run: `info`'s normalisation unless `model_config.input_norm`
  names one of `NORMALIZATIONS`, resized to `model_config.input_size`; identity
  for feature vectors (`images` False or no `info`)."""
  if info is None or not images:
    return Inputs()
  norm = model_config.get("input_norm", "dataset")
  if norm in NORMALIZATIONS:
    mean, std = NORMALIZATIONS[norm]
    info = dataclasses.replace(info, mean=mean, std=std)
  return Inputs(info, model_config.input_size)

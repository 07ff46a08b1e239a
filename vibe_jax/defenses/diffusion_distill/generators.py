"""Image-variation generators behind one interface, chosen by `distill.generator`.

A generator maps a batch of training images (uint8, (B, H, W, 3), as given: possibly
triggered) and their indices to one variation each, same shape. `settings()` is
what identifies its output (recorded beside the cached variations, so a cache made
with other settings is never reused).

- `diffusers`: an image-variation (or image-to-image) pipeline of the `diffusers`
  library loaded from a local model folder (`distill.model_path`; Versatile
  Diffusion as the paper, or e.g. `StableDiffusionImageVariationPipeline`), called
  with `image=`, `height`, `width`, `num_inference_steps`, `guidance_scale` and
  one seeded torch generator per image, then resized to the dataset's side and
  (`distill.color_transfer`) given the source's colour statistics. Optional extra:
  `pip install -e ".[diffusion]"` (torch, diffusers, transformers); the core
  library never imports them. Deviation: the reference seeds one generator for the
  whole run; we seed each image from (seed, index), so that a resumed run
  regenerates exactly the images it had not finished.
- `folder`: variations generated elsewhere, `distill.folder/<index>.png` (or
  .jpg/.jpeg, index zero-padded or not) for every training index; resized to the
  dataset's side if needed, colour-transferred like `diffusers`'s.
- `identity`: the clean originals (an oracle upper bound: a generator that removes
  every trigger and changes nothing else).
"""

import dataclasses
import importlib.util
import pathlib
from typing import Any, Optional, Protocol

import numpy as np
from PIL import Image

from vibe_jax.data.load import CleanViews
from vibe_jax.defenses.diffusion_distill.colour import mean_std_transfer
from vibe_jax.errors import InputError, MissingFileError

__all__ = ["Generator", "IdentityGenerator", "FolderGenerator", "DiffusersGenerator",
           "build_generator", "check_generator", "GENERATORS", "DIFFUSION_INSTALL"]

GENERATORS = ("diffusers", "folder", "identity")
DIFFUSION_INSTALL = 'pip install -e ".[diffusion]"'


class Generator(Protocol):
  """One variation per image."""

  name: str

  def settings(self) -> dict[str, Any]:
    """What identifies this generator's output (JSON-ready)."""

  def generate(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Variations of `images` (uint8 (B, H, W, 3)) at training `indices`."""


def _resized(image: np.ndarray, side: int) -> np.ndarray:
  if image.shape[0] == image.shape[1] == side:
    return image
  return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


@dataclasses.dataclass
class IdentityGenerator:
  """The clean training images (an oracle: see the module docstring)."""

  clean: CleanViews
  name: str = "identity"

  def settings(self) -> dict[str, Any]:
    return {"generator": self.name, "clean": self.clean.key}

  def generate(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    del images
    return np.asarray(self.clean.train[np.asarray(indices)])


@dataclasses.dataclass
class FolderGenerator:
  """Variations read from `root/<index>.<png|jpg|jpeg>`."""

  root: pathlib.Path
  color_transfer: bool
  name: str = "folder"

  def settings(self) -> dict[str, Any]:
    return {"generator": self.name, "folder": str(self.root.resolve()),
            "color_transfer": self.color_transfer}

  def _path(self, index: int) -> pathlib.Path:
    for stem in (f"{index:06d}", f"{index:05d}", str(index)):
      for suffix in (".png", ".jpg", ".jpeg"):
        if (self.root / f"{stem}{suffix}").is_file():
          return self.root / f"{stem}{suffix}"
    raise MissingFileError(f"distill.folder {str(self.root)!r} has no variation of training "
                           f"image {index} (expected {index:06d}.png or .jpg)")

  def generate(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    out = []
    for image, index in zip(images, indices):
      with Image.open(self._path(int(index))) as f:
        variation = _resized(np.asarray(f.convert("RGB")), image.shape[0])
      out.append(mean_std_transfer(variation, image) if self.color_transfer else variation)
    return np.stack(out)


@dataclasses.dataclass
class DiffusersGenerator:
  """A diffusers pipeline from a local folder (see the module docstring)."""

  model_path: pathlib.Path
  steps: int
  guidance: float
  size: int
  seed: int
  color_transfer: bool
  name: str = "diffusers"
  _pipe: Optional[Any] = dataclasses.field(default=None, repr=False)

  def settings(self) -> dict[str, Any]:
    return {"generator": self.name, "model_path": str(self.model_path.resolve()),
            "steps": self.steps, "guidance": self.guidance, "size": self.size,
            "seed": self.seed, "color_transfer": self.color_transfer}

  def _pipeline(self):
    if self._pipe is None:
      # Lazy: torch and diffusers are an optional extra, loaded only by this generator.
      import diffusers
      import torch
      torch.set_num_threads(max(1, torch.get_num_threads()))
      self._pipe = diffusers.DiffusionPipeline.from_pretrained(str(self.model_path))
      self._pipe.set_progress_bar_config(disable=True)
    return self._pipe

  def generate(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    import torch  # lazy: see _pipeline
    pipe = self._pipeline()
    sources = [Image.fromarray(i).resize((self.size, self.size), Image.BICUBIC) for i in images]
    seeds = [torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(i)) for i in indices]
    call = getattr(pipe, "image_variation", pipe)  # Versatile Diffusion's method, else __call__
    out = call(image=sources, height=self.size, width=self.size,
               num_inference_steps=self.steps, guidance_scale=self.guidance,
               generator=seeds, output_type="np").images
    out = [(np.clip(np.asarray(o), 0, 1) * 255).round().astype(np.uint8) for o in out]
    out = [_resized(o, image.shape[0]) for o, image in zip(out, images)]
    if self.color_transfer:
      out = [mean_std_transfer(o, image) for o, image in zip(out, images)]
    return np.stack(out)


def check_generator(c) -> None:
  """Raises InputError (one line naming the fix) when the `distill` section's
  folder or diffusers generator cannot be built: its folder is missing, or the
  optional extra is not installed."""
  if c.generator == "folder" and (not c.folder or not pathlib.Path(c.folder).is_dir()):
    raise InputError(f"distill.folder {c.folder!r} must name a folder of variations "
                     "(<index>.png for every training image)")
  if c.generator != "diffusers":
    return
  missing = [m for m in ("torch", "diffusers", "transformers")
             if importlib.util.find_spec(m) is None]
  if missing:
    raise InputError(f"distill.generator='diffusers' needs {', '.join(missing)}: "
                     f"{DIFFUSION_INSTALL}")
  if not c.model_path or not pathlib.Path(c.model_path).is_dir():
    raise InputError(f"distill.model_path {c.model_path!r} must name a local diffusers "
                     "model folder (e.g. Versatile Diffusion saved with save_pretrained)")


def build_generator(c, seed: int, clean: Optional[CleanViews]) -> Generator:
  """The generator the `distill` config section names.

  Raises:
    InputError: a missing setting, the optional extra not installed, or no clean
      views for the identity oracle (one line naming the fix).
  """
  check_generator(c)
  if c.generator == "identity":
    if clean is None:
      raise InputError("distill.generator='identity' needs image data with known clean "
                       "images (config.data.source='images')")
    return IdentityGenerator(clean)
  if c.generator == "folder":
    return FolderGenerator(pathlib.Path(c.folder), c.color_transfer)
  return DiffusersGenerator(pathlib.Path(c.model_path), c.steps, c.guidance, c.size,
                            seed, c.color_transfer)

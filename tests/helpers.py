"""Small data and configs shared by the tests: all made here, nothing downloaded."""

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from configs import vibe_a_features
from vibe_jax.config import base_config
from vibe_jax.data import FeatureData

ROOT = pathlib.Path(__file__).resolve().parents[1]


def class_colour_folder(root: pathlib.Path, per_class: int = 16, classes: int = 4
                        ) -> pathlib.Path:
  """An image folder (train/test) of 32 px images; each class has its own mean
  colour, so that a CNN can learn something."""
  rng = np.random.default_rng(0)
  for split, n in (("train", per_class), ("test", per_class // 2)):
    for c in range(classes):
      (root / split / f"class{c}").mkdir(parents=True)
      for i in range(n):
        base = np.full((32, 32, 3), 40 + 50 * c, np.int16)
        noise = rng.integers(-30, 30, (32, 32, 3))
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / split / f"class{c}" / f"{i:03d}.png")
  return root


def random_folder(root: pathlib.Path, size: int = 32, per_class: int = 6,
                  classes=("cat", "dog", "emu"), fmt: str = "png") -> pathlib.Path:
  """An image folder (train/test) of random-pixel images."""
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in classes:
      (root / split / name).mkdir(parents=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{i:03d}.{fmt}")
  return root


def image_config(root: pathlib.Path, steps: int = 20):
  """VIBE-SS-F with the small CNN on the folder `root` (25% BadNets), VIBE only."""
  c = base_config()
  c.defenses = "vibe"
  c.data.source, c.data.dataset, c.data.attack = "images", str(root), "badnets"
  c.data.attack_params = "rate=0.25"
  c.model.backbone, c.model.variant = "small_cnn", "F"
  c.optim.lr.backbone = 0.01
  c.num_steps, c.batch_size, c.estep.period = steps, 8, 10
  c.log_every, c.checkpoint.every, c.progress_bar = 10, 10, False
  return c


def clusters(seed=0, n_per_class=60, k=4, d=12, rate=0.15) -> FeatureData:
  """Gaussian clusters; poisoned examples get a large 'trigger' feature and label 0."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d)) * 3.0
  centres[:, -1] = 0.0

  def sample(labels):
    return (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32)

  true = np.repeat(np.arange(k), n_per_class)
  x = sample(true)
  poisoned = np.zeros(len(true), bool)
  candidates = np.flatnonzero(true != 0)
  poisoned[rng.choice(candidates, int(rate * len(true)), replace=False)] = True
  x[poisoned, -1] = 6.0
  given = np.where(poisoned, 0, true)
  test_y = np.repeat(np.arange(k), 20)
  asr = sample(np.repeat(np.arange(1, k), 20))
  asr[:, -1] = 6.0
  return FeatureData(x, given, sample(test_y), test_y, true, poisoned, asr,
                     np.zeros(len(asr), np.int32))


def planted(seed=0, n=60, k=4, d=12, rate=0.15, signal=0.2) -> FeatureData:
  """A hard clean task (class centres weak against the noise) and planted poisoned
  examples that are easy: a tight cluster along one axis, labelled 0."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d)) * signal
  centres[:, -1] = 0.0
  clean = lambda y: (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
  trigger = lambda m: (np.eye(d)[-1] * 4 + 0.1 * rng.normal(size=(m, d))).astype(np.float32)
  true = np.repeat(np.arange(k), n)
  x = clean(true)
  poisoned = np.zeros(len(true), bool)
  poisoned[rng.choice(np.flatnonzero(true != 0), int(rate * len(true)), replace=False)] = True
  x[poisoned] = trigger(poisoned.sum())
  test_y = np.repeat(np.arange(k), 20)
  return FeatureData(x, np.where(poisoned, 0, true), clean(test_y), test_y, true, poisoned,
                     trigger(60), np.zeros(60, np.int32))


def feature_config():
  """VIBE-A on feature vectors, 60 steps, VIBE only."""
  config = vibe_a_features.get_config()
  config.num_steps, config.batch_size, config.estep.period = 60, 32, 20
  config.log_every, config.checkpoint.every, config.progress_bar = 20, 30, False
  config.defenses = "vibe"
  return config


def saved_state(workdir: pathlib.Path, stage: str, step: int, target=None) -> dict:
  """The state a stage saved at `step`, as nested dicts."""
  path = pathlib.Path(workdir) / stage / "checkpoints" / str(step) / "default"
  checkpointer = ocp.StandardCheckpointer()
  if target is None:
    # Onto this process's first device, whatever devices the run saved from.
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = checkpointer.metadata(path).item_metadata.tree
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), tree)
  return checkpointer.restore(path, target)

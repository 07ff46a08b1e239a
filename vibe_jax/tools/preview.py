"""Preview an attack: clean training images above their poisoned versions.

  python -m vibe_jax.tools.preview --attack=wanet \
      --dataset=../shared/data/cifar10-jpeg --out=wanet.png

--dataset takes a TFDS name (with --data_dir) or an image-folder path. One image of
each of the first --num classes (other than an all-to-one attack's target) is shown;
32px images are enlarged 4x (nearest neighbour) so the trigger is visible. Rows:
clean, poisoned as in training, poisoned as at test time (only when the attack's
test trigger differs, as for the adaptive attacks), and the difference x 4.
"""

import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from vibe_jax import attacks
from vibe_jax.data import sources
from vibe_jax.errors import InputError

_ATTACK = flags.DEFINE_string("attack", None, "Attack name (see vibe_jax.attacks.names()).")
_DATASET = flags.DEFINE_string("dataset", None, "TFDS name or image-folder path.")
_OUT = flags.DEFINE_string("out", None, "Output PNG file.")
_NUM = flags.DEFINE_integer("num", 8, "How many images.")
_SEED = flags.DEFINE_integer("seed", 0, "Attack seed.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to take images from.")


def preview_grid(clean: np.ndarray, poisoned: np.ndarray, test: np.ndarray | None = None,
                 gap: int = 2) -> np.ndarray:
  """Rows: clean, poisoned (training trigger), the test trigger if it differs, and
  |training difference| x 4; one uint8 image."""
  diff = np.clip(np.abs(poisoned.astype(int) - clean.astype(int)) * 4, 0, 255)
  rows = []
  for row in (clean, poisoned, test, diff.astype(np.uint8)):
    if row is None:
      continue
    tiles = [np.pad(t, ((gap, gap), (gap, gap), (0, 0)), constant_values=255) for t in row]
    rows.append(np.concatenate(tiles, axis=1))
  return np.concatenate(rows, axis=0)


def main(argv):
  """Command line: see the module docstring."""
  del argv
  try:
    info = sources.dataset_info(_DATASET.value)
    source = sources.open_source(_DATASET.value, _SPLIT.value, data_dir=_DATA_DIR.value)
    attack = attacks.build(_ATTACK.value, image_size=info.image_size, seed=_SEED.value,
                           num_classes=source.num_classes)
  except (InputError, ValueError) as error:
    sys.exit(f"FATAL: {error}")
  classes = [c for c in range(source.num_classes) if c != attack.target][:_NUM.value]
  indices = np.asarray([np.flatnonzero(source.labels == c)[0] for c in classes])
  clean = source.images(indices)
  poisoned = attack.apply(clean, indices)
  test = attack.apply_test(clean, indices)
  test = None if np.array_equal(test, poisoned) else test
  if info.image_size <= 64:
    enlarge = lambda a: None if a is None else np.repeat(np.repeat(a, 4, axis=1), 4, axis=2)
    clean, poisoned, test = enlarge(clean), enlarge(poisoned), enlarge(test)
  Image.fromarray(preview_grid(clean, poisoned, test)).save(_OUT.value)
  print(f"wrote {_OUT.value}: {len(indices)} images, attack {attack.name}, "
        f"labels {source.labels[indices].tolist()} -> "
        f"{attack.attack_labels(source.labels[indices]).tolist()}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["attack", "dataset", "out"])
  app.run(main)

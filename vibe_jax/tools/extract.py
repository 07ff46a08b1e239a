"""Extract and cache a frozen backbone's features of a poisoned image dataset.

  python -m vibe_jax.tools.extract --config=configs/cifar10.py:attack=badnets,variant=fm_f \
      --config.model.backbone_weights=dinov2_vitg14.msgpack --workdir=DIR

Writes `DIR/features.npz` (and `features.json`, what made it), the cache the FM
experiments read, also usable on its own with `--config.data.source=npz`.
"""

import pathlib
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from vibe_jax import files
from vibe_jax.data.load import load_data
from vibe_jax.errors import InputError
from vibe_jax.stages import extract_features
from vibe_jax.train import inputs_for

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


def main(argv):
  """Command line: see the module docstring."""
  del argv
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  try:
    loaded = load_data(config)
    if loaded.info is None:
      raise InputError("feature extraction needs config.data.source='images'")
    if not config.model.backbone:
      raise InputError("feature extraction needs config.model.backbone")
    files.write_json(workdir / "poisoning.json", loaded.poisoning, None)
    result = extract_features(config, loaded.data, inputs_for(config.model, loaded.info),
                              workdir, loaded.clean, loaded.poisoning)
  except InputError as error:
    sys.exit(f"FATAL input error: {error}")
  print(f"wrote {result.path}: train {result.data.train_features.shape}, "
        f"test {result.data.test_features.shape}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)

"""VIBE-A (input-agnostic corruption model p(y|l)) on a feature matrix.

The reference's VIBE-FM-A hyper-parameters: as VIBE-F, but eta is frozen at the
class means of the given labels (spec 5.4).

  python -m vibe_jax.main --config=configs/vibe_a_features.py \
      --config.data.path=features.npz --workdir=workdirs/vibe_a
"""

from vibe_jax.config import base_config


def get_config():
  """Returns the VIBE-A config."""
  c = base_config()
  c.model.variant = "A"
  c.optim.frozen.eta = True
  return c

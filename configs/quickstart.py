"""Quickstart: VIBE-F against 10% BadNets on scikit-learn's 8x8 digits, offline.

  python -m vibe_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart

Trains the no-defense classifier and VIBE on the 64 pixels and prints ACC and ASR
of both; well under 3 minutes on a laptop CPU.
"""

from vibe_jax.config import base_config


def get_config():
  """Returns the quickstart config."""
  c = base_config()
  c.data.source = "digits"
  c.num_steps = 1500
  c.batch_size = 128
  c.estep.period = 250
  c.log_every = 250
  c.checkpoint.every = 500
  return c

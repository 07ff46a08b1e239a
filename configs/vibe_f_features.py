"""VIBE-F (input-conditioned corruption model p(y|l,x)) on a feature matrix.

The reference's VIBE-FM-F hyper-parameters: lr 0.01 for mu and eta, 0.1 for the
prior, batch 1024, 15,000 steps, an E-step every 500.

  python -m vibe_jax.main --config=configs/vibe_f_features.py \
      --config.data.path=features.npz --workdir=workdirs/vibe_f

Cost: 15,000 M-steps of a 1024 x D batch plus 30 E-steps over the N x K log-joint;
not yet measured at full size (the E-step alone: see benchmarks/estep.py).
"""

from vibe_jax.config import base_config


def get_config():
  """Returns the VIBE-F config."""
  return base_config()

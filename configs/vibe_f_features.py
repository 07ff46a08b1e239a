"""VIBE-F (input-conditioned corruption model p(y|l,x)) on a feature matrix.

The reference's VIBE-FM-F hyper-parameters: lr 0.01 for mu and eta, 0.1 for the
prior, batch 1024, 15,000 steps, an E-step every 500.

  python -m vibe_jax.main --config=configs/vibe_f_features.py \
      --config.data.path=features.npz --workdir=workdirs/vibe_f

Cost: about 1 minute per 1,000 steps for 50,000 x 1,536 features on a 2-core CPU
(mostly the M-steps), seconds on a GPU.
"""

from configs.common import base_config


def get_config():
  """Returns the VIBE-F config."""
  return base_config()

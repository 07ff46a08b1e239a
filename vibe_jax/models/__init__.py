"""Models: the VIBE head and the model that puts it on a backbone."""

from vibe_jax.models.vibe import VIBEModel
from vibe_jax.models.vmf import VIBEHead, class_means, init_head_params, l2_normalize

__all__ = ["VIBEHead", "VIBEModel", "class_means", "init_head_params", "l2_normalize"]

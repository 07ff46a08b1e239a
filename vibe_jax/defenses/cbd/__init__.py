"""CBD, Causality-inspired Backdoor Defense (Zhang et al., CVPR 2023): a confounder
model that learns the backdoor shortcut, and a clean model trained on examples
re-weighted away from it (optionally with a mutual-information penalty)."""

from vibe_jax.defenses.cbd.critic import Critic, mutual_information, spectral_normalize
from vibe_jax.defenses.cbd.defense import CBD, sample_weights

__all__ = ["CBD", "Critic", "mutual_information", "sample_weights", "spectral_normalize"]

"""Training on diffusion-based image variations with knowledge distillation."""

from vibe_jax.defenses.diffusion_distill.defense import Distill

__all__ = ["Distill"]

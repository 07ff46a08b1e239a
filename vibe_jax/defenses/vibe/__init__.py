"""VIBE: variational EM with optimal-transport pseudo-labels (the paper's defense)."""

from vibe_jax.defenses.vibe.defense import VIBE
from vibe_jax.defenses.vibe.estep_hook import EStepHook, pseudo_label_metrics

__all__ = ["VIBE", "EStepHook", "pseudo_label_metrics"]

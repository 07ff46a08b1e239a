"""Backdoor attacks and the seeded choice of poisoned examples."""

from vibe_jax.attacks.selection import poisoned_indices

__all__ = ["poisoned_indices"]

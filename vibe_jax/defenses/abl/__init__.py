"""ABL, Anti-Backdoor Learning (Li et al., NeurIPS 2021): isolate the examples
learned fastest, train on the rest, then unlearn the isolated ones."""

from vibe_jax.defenses.abl.defense import ABL, isolate, phase_steps

__all__ = ["ABL", "isolate", "phase_steps"]

"""Defenses, picked by name with `config.defenses` (a registry, see `base.py`)."""

from vibe_jax.defenses import abl, cbd, cert_ssbd, diffusion_distill, none, vibe  # registers them
from vibe_jax.defenses.base import (Defense, DefenseContext, DefenseOutcome, build,
                                    defense_classes, names, register)

__all__ = ["abl", "cbd", "cert_ssbd", "none", "vibe", "Defense", "DefenseContext", "DefenseOutcome", "build",
           "defense_classes", "names", "register"]

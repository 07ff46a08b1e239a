"""Self-supervised pretraining on the poisoned set; methods behind one interface."""

from vibe_jax.stages.ssl import all4one, simclr  # registers the methods
from vibe_jax.stages.ssl.base import SSLMethod, SSLParts, build, lars, names, register
from vibe_jax.stages.ssl.pretrain import KNNMonitor, SSLResult, pretrain

__all__ = ["all4one", "simclr", "SSLMethod", "SSLParts", "build", "lars", "names",
           "register", "KNNMonitor", "SSLResult", "pretrain"]

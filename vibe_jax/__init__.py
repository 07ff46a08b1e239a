"""vibe_jax: backdoor defense by variational EM (VIBE) in JAX."""

__version__ = "0.1.0"

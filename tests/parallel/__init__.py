"""Tests of vibe_jax.parallel."""

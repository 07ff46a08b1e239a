"""Shared fixtures: tests run on the CPU with tiny shapes."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

from vibe_jax import runtime  # noqa: E402

runtime.configure_xla_flags()  # the flags a run gets (vibe_jax.main sets them too)
runtime.configure_allocator()  # and its allocator settings

# Many tests compile the same steps (the config grid above all): a persistent
# compilation cache for the session makes the repeats cheap.
# Set once in the controller and inherited by the pytest-xdist workers, so that
# they share it.
os.environ.setdefault("VIBE_JAX_TEST_XLA_CACHE", tempfile.mkdtemp(prefix="vibe_jax_xla_"))
runtime.enable_compilation_cache(os.environ["VIBE_JAX_TEST_XLA_CACHE"])
# Command-line runs the tests start use it too, instead of the user's ~/.cache.
os.environ.setdefault("VIBE_JAX_COMPILATION_CACHE", os.environ["VIBE_JAX_TEST_XLA_CACHE"])

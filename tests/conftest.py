"""Shared fixtures: tests run on the CPU with tiny shapes."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

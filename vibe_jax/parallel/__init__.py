"""Devices: the mesh and the shardings every step uses (multi-host comes here)."""

from vibe_jax.parallel.mesh import (DATA_AXIS, batch_rows, check_batch_size, data_mesh,
                                    replicated)

__all__ = ["DATA_AXIS", "data_mesh", "replicated", "batch_rows", "check_batch_size"]

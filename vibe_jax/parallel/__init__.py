"""Devices: the mesh, the shardings every step uses, and the multi-host runtime."""

from vibe_jax.parallel.distributed import MODES, Topology, check_topology, initialize
from vibe_jax.parallel.multihost import global_batch, is_writer, process_rows, sync, to_host
from vibe_jax.parallel.mesh import (DATA_AXIS, batch_rows, check_batch_size, data_mesh,
                                    replicated, stacked_batch_rows)

__all__ = ["DATA_AXIS", "data_mesh", "replicated", "batch_rows", "stacked_batch_rows",
           "check_batch_size",
           "MODES", "Topology", "initialize", "check_topology", "is_writer", "to_host",
           "global_batch", "process_rows", "sync"]

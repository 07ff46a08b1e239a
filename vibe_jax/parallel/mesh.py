"""Device mesh and shardings: data parallelism over one "data" axis.

The training state and the (feature) dataset are replicated; each batch is split
along its rows over every device of the mesh, and XLA inserts the gradient
all-reduce. One mesh over all devices is the default, as in big_vision.
"""

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "data_mesh", "replicated", "batch_rows", "check_batch_size"]

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis mesh ("data") over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_rows(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the "data" axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def stacked_batch_rows(mesh: Mesh) -> NamedSharding:
  """Several steps' batches stacked (steps, batch, ...): the batch dimension split
  over the "data" axis, every step on every device."""
  return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless every device gets the same number of rows."""
  devices = mesh.shape[DATA_AXIS]
  if batch_size % devices:
    raise ValueError(f"batch size {batch_size} is not divisible by the {devices} "
                     "devices of the data axis")


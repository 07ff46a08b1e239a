"""What the code needs from a multi-process run once it is connected
(`distributed.initialize`): each process's rows of a global batch, global arrays
from them, gathers onto every host, barriers, and which process writes files
(`files.is_writer`, process 0). In a single process each is trivial.
"""

import functools
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from vibe_jax.files import is_writer
from vibe_jax.parallel.mesh import DATA_AXIS, batch_rows, data_mesh, stacked_batch_rows

__all__ = ["is_writer", "to_host", "process_rows", "global_batch", "sync"]


def to_host(x: Any) -> Any:
  """Every leaf of `x` as a full NumPy array, on every process.

  A collective when a leaf is sharded over processes: every process must call
  it on the same arrays in the same order.

  Args:
    x: a jax.Array (possibly sharded over processes), NumPy array, or a pytree
      of them.

  Returns:
    The same structure with NumPy leaves.
  """
  return jax.tree.map(_leaf_to_host, x)


def _leaf_to_host(x):
  """One leaf of `to_host`."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:  # every process already holds all of it
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_rows(global_batch_size: int, mesh: Optional[Mesh] = None) -> slice:
  """The rows of a global batch that this process reads.

  The rows are those its devices hold when the batch is split along the mesh's
  "data" axis: process i gets the i-th block for a mesh of `jax.devices()`.

  Args:
    global_batch_size: rows of the batch over all processes.
    mesh: the mesh the batch is sharded over (default `data_mesh()`).

  Returns:
    A slice of `global_batch_size` rows.

  Raises:
    ValueError: the rows do not split evenly, or this process's devices sit at
      places of the mesh that hold rows that are not one block.
  """
  return _process_rows(global_batch_size, data_mesh() if mesh is None else mesh)


@functools.lru_cache(maxsize=64)
def _process_rows(global_batch_size, mesh):
  """`process_rows`, cached: the input pipeline asks at every step."""
  devices = mesh.shape[DATA_AXIS]
  if global_batch_size % devices:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                     f"{devices} devices of the data axis")
  index_map = batch_rows(mesh).addressable_devices_indices_map((global_batch_size,))
  blocks = sorted({index[0].indices(global_batch_size)[:2]
                   for index in index_map.values()})
  for (_, stop), (start, _) in zip(blocks, blocks[1:]):
    if stop != start:
      raise ValueError(f"process {jax.process_index()} holds rows that are not "
                       f"one block ({blocks}); order the mesh's devices by process")
  return slice(blocks[0][0], blocks[-1][1])


def global_batch(local_rows: Any, mesh: Mesh, *, stacked: bool = False) -> Any:
  """One global row-sharded batch from each process's own rows.

  Args:
    local_rows: this process's rows (`process_rows` of the global batch): an
      array, or a dict (pytree) of arrays with the same leading size.
    mesh: the mesh whose "data" axis splits the rows.
    stacked: the arrays are several steps' rows (steps, rows, ...): the rows are
      the second dimension.

  Returns:
    A jax.Array (or the same pytree of them) of all processes' rows, in process
    order, sharded by rows.
  """
  sharding = stacked_batch_rows(mesh) if stacked else batch_rows(mesh)
  axis = int(stacked)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

  def one(rows):
    rows = np.asarray(rows)
    if rows.ndim <= axis or not local_devices or rows.shape[axis] % local_devices:
      raise ValueError(f"{rows.shape[axis] if rows.ndim > axis else 'no'} local rows do "
                       f"not split evenly over this process's {local_devices} devices")
    if jax.process_count() == 1:
      return jax.device_put(rows, sharding)
    return jax.make_array_from_process_local_data(sharding, rows)

  return jax.tree.map(one, local_rows)


def sync(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)

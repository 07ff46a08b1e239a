"""Runs the blocked Sinkhorn on one device, or per device over row-sharded inputs.

The layout comes from the caller's arrays: rows split over the mesh's data axis
give one blocked loop per device (`shard_map`), the class sums combined across
devices; anything else runs one loop on one device.
"""

from typing import Callable

import jax
from jax import lax
from jax.sharding import PartitionSpec

from vibe_jax.estep import blocked
from vibe_jax.estep.result import PseudoLabels
from vibe_jax.parallel.mesh import DATA_AXIS

__all__ = ["row_mesh", "solve_rows"]

# (*row arrays of one device, block size) -> its `blocked.RowBlock`.
MakeRowBlock = Callable[..., blocked.RowBlock]


def row_mesh(x: jax.Array):
  """The mesh whose data axis splits x's rows, or None (one device's loop).

  Eagerly, a `NamedSharding`'s mesh. Under jit a tracer shows its mesh but not
  its partition spec (the axes are Auto), so an array on a mesh with a data
  axis is taken as split by rows: true of every array this package shards, and
  when it is not (replicated), splitting it by rows is still correct.

  Args:
    x: an (N, ...) array.

  Returns:
    The `Mesh` or `AbstractMesh`, where its data axis has more than one device
    and divides N; else None.
  """
  sharding = jax.typeof(x).sharding if isinstance(x, jax.core.Tracer) else getattr(
      x, "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or DATA_AXIS not in mesh.axis_names:
    return None
  if mesh.axis_types[mesh.axis_names.index(DATA_AXIS)] == jax.sharding.AxisType.Manual:
    return None  # already inside a shard_map over the rows: one loop per device
  devices = mesh.shape[DATA_AXIS]
  return mesh if devices > 1 and x.shape[0] % devices == 0 else None


def solve_rows(make_block: MakeRowBlock, row_arrays: tuple[jax.Array, ...],
               prior: jax.Array, *, block_rows: int, dtype, num_rows: int,
               **sinkhorn) -> PseudoLabels:
  """`blocked.sinkhorn` over the rows of `row_arrays`, per device where they are sharded.

  Args:
    make_block: builds the row-block function from one device's `row_arrays`
      and the block size.
    row_arrays: arrays with the N rows of log P (or what it is computed from)
      as their leading axis; the first decides the layout (`row_mesh`).
    prior: (K,) class marginal.
    block_rows: rows per block (capped at the rows of a device).
    dtype: the dtype to compute in.
    num_rows: global rows [0, num_rows) are samples, the rest padding.
    **sinkhorn: epsilon, threshold, max_iterations, inner_iterations.

  Returns:
    A `PseudoLabels`; `labels` and `f` split by rows like `row_arrays`.
  """
  n = row_arrays[0].shape[0]
  mesh = row_mesh(row_arrays[0])
  if mesh is None:
    size = min(block_rows, n)
    blocks = blocked.Blocks(make_block(*row_arrays, size), n, size, dtype)
    return blocked.sinkhorn(blocks, prior, num_rows=num_rows, **sinkhorn)
  local = n // mesh.shape[DATA_AXIS]
  size = min(block_rows, local)

  def per_device(prior, *arrays):
    blocks = blocked.Blocks(make_block(*arrays, size), local, size, dtype, DATA_AXIS)
    return blocked.sinkhorn(blocks, prior, num_rows=num_rows,
                            row_offset=lax.axis_index(DATA_AXIS) * local, **sinkhorn)

  # shard_map rather than jit's sharding propagation: each device must run the
  # block loop over its own rows, with one all-reduce of K class sums per
  # iteration; under plain jit the loop's dynamic slices of a row-sharded array
  # would gather rows from the other devices.
  rows, everywhere = PartitionSpec(DATA_AXIS), PartitionSpec()
  out_specs = PseudoLabels(labels=rows, converged=everywhere, iterations=everywhere,
                           error=everywhere, f=rows, g=everywhere)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(everywhere,) + (rows,) * len(row_arrays),
                       out_specs=out_specs)(prior, *row_arrays)

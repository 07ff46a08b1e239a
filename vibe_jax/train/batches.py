"""Where a step's batch comes from: the batch-source interface and the one
implementation used now, the whole dataset resident on the devices.

A source does two things. On the host, `step_input(t)` gives what step t needs
from outside (here, the indices of its examples: a pure function of (seed, t), so
a resumed run reads exactly the batches of an uninterrupted one). Inside the
jitted step, `gather(arrays, step_input)` turns it into the batch dict. A
streaming host pipeline (scale-out) implements the same two methods, with
`place` returning {} and `step_input` the decoded batch.
"""

from typing import Protocol

import jax
import numpy as np
from jax.sharding import Mesh

from vibe_jax import parallel

__all__ = ["IndexBatches", "BatchSource", "DeviceArrays"]


class IndexBatches:
  """Fixed-size batches of indices from a per-epoch permutation of (seed, epoch).

  The last incomplete batch of an epoch is skipped, so that a jitted step
  compiles once (the reference uses it).
  """

  def __init__(self, n: int, batch_size: int, seed):
    self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
    self.per_epoch = self.n // self.batch_size
    self._epoch, self._perm = -1, None

  def __call__(self, step: int) -> np.ndarray:
    epoch, offset = divmod(step, self.per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      key = (*self.seed, epoch) if isinstance(self.seed, tuple) else (self.seed, epoch)
      self._perm = np.random.default_rng(key).permutation(self.n)
    start = offset * self.batch_size
    return self._perm[start:start + self.batch_size].astype(np.int32)


class BatchSource(Protocol):
  """What the training loop reads batches from."""

  batch_size: int

  def place(self, mesh: Mesh) -> dict[str, jax.Array]:
    """Arrays kept on the devices for the whole stage, passed to every step."""

  def step_input(self, step: int) -> np.ndarray:
    """The host input of step `step`, split by rows over the mesh."""

  def gather(self, arrays: dict[str, jax.Array], step_input: jax.Array) -> dict:
    """Traced in the step: the batch dict of one step."""


class DeviceArrays:
  """The whole dataset (features or uint8 images, labels) replicated on the
  devices; each step gathers its rows by index inside jit (CIFAR-sized data, as
  airbench does). The batch has every array's rows plus "index"."""

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed):
    n = len(next(iter(arrays.values())))
    self.arrays = arrays
    self.batches = IndexBatches(n, batch_size, seed)
    self.batch_size = self.batches.batch_size

  def place(self, mesh: Mesh) -> dict[str, jax.Array]:
    return jax.device_put(self.arrays, parallel.replicated(mesh))

  def step_input(self, step: int) -> np.ndarray:
    return self.batches(step)

  def gather(self, arrays: dict[str, jax.Array], step_input: jax.Array) -> dict:
    return {**{k: v[step_input] for k, v in arrays.items()}, "index": step_input}

"""Where a step's batch comes from: the batch-source interface and its two
implementations, chosen by where the data lives (`batch_source`).

A source does two things. On the host, `steps(start, stop)` yields what each step
needs from outside, a pure function of (seed, t), so a resumed run reads exactly
the batches of an uninterrupted one without replaying earlier steps. Inside the
jitted step, `gather(arrays, step_input)` turns it into the batch dict.

- `DeviceArrays`: the whole dataset on the devices (CIFAR-sized data); a step's
  input is its indices, gathered inside jit.
- `StreamBatches`: the dataset read on demand (`data.rows.ImageRows`, ImageNet);
  a step's input is the decoded, poisoned uint8 batch, read ahead by a grain
  pipeline's threads. Augmentation stays in the jitted step for both, so the two
  give the same batches.

With several processes each reads only its own rows of every global batch
(`parallel.process_rows`).
"""

from typing import Any, Iterator, Protocol

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from vibe_jax import parallel
from vibe_jax.data.rows import is_lazy

__all__ = ["IndexBatches", "BatchSource", "DeviceArrays", "StreamBatches", "batch_source"]


class IndexBatches:
  """Fixed-size batches of indices from a per-epoch permutation of (seed, epoch).

  The last incomplete batch of an epoch is skipped, so that a jitted step
  compiles once (the reference uses it).
  """

  def __init__(self, n: int, batch_size: int, seed):
    self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
    self.per_epoch = self.n // self.batch_size
    self._cached = (-1, None)  # (epoch, permutation), replaced as one object

  def __call__(self, step: int) -> np.ndarray:
    epoch, offset = divmod(step, self.per_epoch)
    # Read once: reader threads call this concurrently, so the epoch and its
    # permutation must come from the same assignment.
    cached_epoch, perm = self._cached
    if epoch != cached_epoch:
      key = (*self.seed, epoch) if isinstance(self.seed, tuple) else (self.seed, epoch)
      perm = np.random.default_rng(key).permutation(self.n)
      self._cached = (epoch, perm)
    start = offset * self.batch_size
    return perm[start:start + self.batch_size].astype(np.int32)


class BatchSource(Protocol):
  """What the training loop reads batches from."""

  batch_size: int
  # True when step inputs can be stacked into one call of several steps (`fit`).
  fusable: bool

  def place(self, mesh: Mesh) -> dict[str, jax.Array]:
    """Arrays kept on the devices for the whole stage, passed to every step."""

  def steps(self, start: int, stop: int) -> Iterator[Any]:
    """The host inputs of steps `start .. stop - 1` (this process's rows of each)."""

  def gather(self, arrays: dict[str, jax.Array], step_input: jax.Array) -> dict:
    """Traced in the step: the batch dict of one step."""


class DeviceArrays:
  """The whole dataset (features or uint8 images, labels) replicated on the
  devices; each step gathers its rows by index inside jit (CIFAR-sized data, as
  airbench does). The batch has every array's rows plus "index"."""

  # A step's input is its row indices: several steps stack into one call's input.
  fusable = True

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed):
    n = len(next(iter(arrays.values())))
    self.arrays = arrays
    self.batches = IndexBatches(n, batch_size, seed)
    self.batch_size = self.batches.batch_size

  def place(self, mesh: Mesh) -> dict[str, jax.Array]:
    return jax.device_put(self.arrays, parallel.replicated(mesh))

  def steps(self, start: int, stop: int) -> Iterator[np.ndarray]:
    rows = parallel.process_rows(self.batch_size)
    for t in range(start, stop):
      yield self.batches(t)[rows]

  def gather(self, arrays: dict[str, jax.Array], step_input: jax.Array) -> dict:
    return {**{k: v[step_input] for k, v in arrays.items()}, "index": step_input}


class StreamBatches:
  """Batches read on demand: step t's examples are those `IndexBatches` gives
  `DeviceArrays` for t, read (decoded and poisoned, for `ImageRows`) on the host by
  `prefetch` threads ahead of the step. Nothing stays on the devices; host memory
  holds `prefetch` batches, whatever the dataset's size. The batch has every
  array's rows plus "index"."""

  fusable = False  # a step's input is its examples: one step per call

  def __init__(self, arrays: dict[str, Any], batch_size: int, seed, prefetch: int = 4):
    n = len(next(iter(arrays.values())))
    self.arrays, self.prefetch = arrays, prefetch
    self.batches = IndexBatches(n, batch_size, seed)
    self.batch_size = self.batches.batch_size

  def place(self, mesh: Mesh) -> dict[str, jax.Array]:
    del mesh
    return {}

  def read(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of step `step`'s batch, read now."""
    index = self.batches(step)[parallel.process_rows(self.batch_size)]
    return {**{k: np.asarray(v[index]) for k, v in self.arrays.items()}, "index": index}

  def steps(self, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
    if start >= stop:
      return iter(())
    # Step t's batch is a pure function of (seed, t): a map over step numbers,
    # whose threads read ahead in order.
    dataset = grain.MapDataset.range(start, stop).map(self.read)
    return iter(dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=self.prefetch, prefetch_buffer_size=self.prefetch)))

  def gather(self, arrays: dict[str, jax.Array], step_input: dict) -> dict:
    del arrays
    return step_input


def batch_source(arrays: dict[str, Any], batch_size: int, seed, prefetch: int = 4
                 ) -> "DeviceArrays | StreamBatches":
  """`StreamBatches` when any of `arrays` is read on demand, else `DeviceArrays`."""
  if any(is_lazy(v) for v in arrays.values()):
    return StreamBatches(arrays, batch_size, seed, prefetch)
  return DeviceArrays(arrays, batch_size, seed)

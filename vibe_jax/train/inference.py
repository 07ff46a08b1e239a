"""Evaluation-mode passes over whole arrays, compiled once per model and shape.

An `Inference` holds the jitted functions of one model on one kind of input, made
when it is built, so every later call (each kNN monitor, each evaluator, the
feature extraction) reuses the compiled program. Arrays are cut into batches of
one size (the last padded), so a dataset of any length compiles one program, and
results stay on the device until the end: no host sync per batch. Inputs read on
demand (`data.rows.ImageRows`) are read `read_ahead` batches ahead by host threads
while the devices compute.

Each batch is split by rows over this process's devices (data parallelism over a
mesh of `jax.local_devices()`); the variables are copied to them once per call.
Every process computes on its own devices alone: in a multi-process run each
embeds the rows it is given, with no collective, so the processes need not make
the same calls (the streamed E-step gives each its own rows).
"""

import collections
import concurrent.futures
from typing import Any, Callable, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vibe_jax import parallel
from vibe_jax.train.inputs import Inputs

__all__ = ["Inference"]


def _read_ahead(read: Callable[[Any], Any], items: list, ahead: int) -> Iterator[Any]:
  """`read(item)` for each item in order, up to `ahead` of them running in threads
  before they are needed (host decoding overlaps device work)."""
  if ahead <= 0:
    yield from map(read, items)
    return
  with concurrent.futures.ThreadPoolExecutor(ahead) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(read, item))
      if len(pending) > ahead:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


class Inference:
  """`embed`, `accuracy` and per-example `losses` of `model` (which has an `embed` method and returns
  class scores when called) on inputs prepared by `inputs.eval`."""

  def __init__(self, model: nn.Module, inputs: Inputs = Inputs(), batch_size: int = 256,
               read_ahead: int = 2):
    self.read_ahead = read_ahead
    # Evaluators that need more than these passes (certification) read them.
    self.model, self.inputs = model, inputs
    self._mesh = parallel.data_mesh(jax.local_devices())
    devices = self._mesh.size
    # Whole rows per device: the batch is rounded up to a multiple of the devices.
    self.batch_size = -(-batch_size // devices) * devices
    everywhere, rows = parallel.replicated(self._mesh), parallel.batch_rows(self._mesh)
    self._embed = jax.jit(lambda v, x: model.apply(v, inputs.eval(x), method="embed"),
                          in_shardings=(everywhere, rows), out_shardings=rows)

    def correct(v, x, y, valid):
      predicted = jnp.argmax(model.apply(v, inputs.eval(x)), axis=1)
      return jnp.sum((predicted == y) & valid)

    self._correct = jax.jit(correct, in_shardings=(everywhere, rows, rows, rows),
                            out_shardings=everywhere)

    def losses(v, x, y):
      log_p = model.apply(v, inputs.eval(x))
      return -jnp.take_along_axis(log_p, y[:, None], axis=1)[:, 0]

    self._losses = jax.jit(losses, in_shardings=(everywhere, rows, rows), out_shardings=rows)

  def _chunks(self, n: int):
    """(start, stop, size) of each batch; all batches have `size` rows, a multiple
    of the devices."""
    devices = self._mesh.size
    size = min(self.batch_size, -(-n // devices) * devices)
    return [(i, min(i + size, n), size) for i in range(0, n, size)]

  def _local(self, variables: dict[str, Any]) -> dict[str, Any]:
    """`variables` replicated on this process's devices (from a global array of a
    multi-process run, through the host: its every shard is the same)."""
    here = parallel.replicated(self._mesh)
    if all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(variables)
           if isinstance(x, jax.Array)):
      return jax.device_put(variables, here)  # device to device, no host copy
    return jax.device_put(parallel.to_host(variables), here)

  @staticmethod
  def _padded(a: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    part = a[start:stop]
    if len(part) == size:
      return part
    return np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])

  def embed(self, variables: dict[str, Any], inputs: np.ndarray) -> np.ndarray:
    """Backbone features of `inputs` in evaluation mode (no augmentation), (N, D)."""
    variables = self._local(variables)
    chunks = self._chunks(len(inputs))
    reads = self._reads(lambda c: self._placed(self._padded(inputs, *c)), inputs, chunks)
    outs = [self._embed(variables, x) for x in reads]
    return np.concatenate([o[:b - a] for (a, b, _), o in zip(chunks, jax.device_get(outs))])

  def losses(self, variables: dict[str, Any], inputs: np.ndarray, labels: np.ndarray
             ) -> np.ndarray:
    """Per-example cross-entropy -log p(l = label | x) in evaluation mode, (N,)
    float32 (ABL isolates the examples with the lowest)."""
    variables = self._local(variables)
    chunks = self._chunks(len(inputs))
    reads = self._reads(lambda c: self._placed(self._padded(inputs, *c)), inputs, chunks)
    outs = [self._losses(variables, x, self._placed(self._padded(labels, *c)))
            for c, x in zip(chunks, reads)]
    return np.concatenate([o[:b - a] for (a, b, _), o in zip(chunks, jax.device_get(outs))])

  def _placed(self, rows: np.ndarray) -> jax.Array:
    # Placed explicitly: jit refuses NumPy inputs with a sharding in a
    # multi-process run, even on this process's own devices.
    return jax.device_put(rows, parallel.batch_rows(self._mesh))

  def _reads(self, read, inputs, chunks) -> Iterator[Any]:
    # Arrays in memory are sliced as they are needed; on-demand inputs are read ahead.
    ahead = 0 if isinstance(inputs, np.ndarray) else self.read_ahead
    return _read_ahead(read, chunks, ahead)

  def accuracy(self, variables: dict[str, Any], inputs: Optional[np.ndarray],
               labels: Optional[np.ndarray]) -> float:
    """Accuracy of argmax p(l|x) on (inputs, labels); NaN when there are none."""
    if inputs is None or len(inputs) == 0:
      return float("nan")
    variables = self._local(variables)
    total = 0
    chunks = self._chunks(len(inputs))
    reads = self._reads(lambda c: self._placed(self._padded(inputs, *c)), inputs, chunks)
    for (a, b, s), x in zip(chunks, reads):
      valid = self._placed(np.arange(s) < b - a)
      total = total + self._correct(variables, x, self._placed(self._padded(labels, a, b, s)),
                                    valid)
    return int(total) / len(inputs)

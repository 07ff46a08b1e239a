"""Which examples each training step reads, as a pure function of (seed, step)."""

import numpy as np

__all__ = ["IndexBatches"]


class IndexBatches:
  """Fixed-size batches of indices from a per-epoch permutation of (seed, epoch).

  Any step's batch is a function of (seed, step) alone, so a resumed run reads
  exactly the batches an uninterrupted one would. The last incomplete batch of an
  epoch is skipped, so that a jitted step compiles once (the reference uses it).
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

"""Evaluation-mode passes over whole arrays, compiled once per model and shape.

An `Inference` holds the jitted functions of one model on one kind of input, made
when it is built, so every later call (each kNN monitor, each evaluator, the
feature extraction) reuses the compiled program. Arrays are cut into batches of
one size (the last padded), so a dataset of any length compiles one program, and
results stay on the device until the end: no host sync per batch.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vibe_jax.train.inputs import Inputs

__all__ = ["Inference"]


class Inference:
  """`embed` and `accuracy` of `model` (which has an `embed` method and returns
  class scores when called) on inputs prepared by `inputs.eval`."""

  def __init__(self, model: nn.Module, inputs: Inputs = Inputs(), batch_size: int = 1024):
    self.batch_size = batch_size
    self._embed = jax.jit(lambda v, x: model.apply(v, inputs.eval(x), method="embed"))

    def correct(v, x, y, valid):
      predicted = jnp.argmax(model.apply(v, inputs.eval(x)), axis=1)
      return jnp.sum((predicted == y) & valid)

    self._correct = jax.jit(correct)

  def _chunks(self, n: int):
    """(start, stop, size) of each batch; all batches have `size` rows."""
    size = min(self.batch_size, n)
    return [(i, min(i + size, n), size) for i in range(0, n, size)]

  @staticmethod
  def _padded(a: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    part = a[start:stop]
    if len(part) == size:
      return part
    return np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])

  def embed(self, variables: dict[str, Any], inputs: np.ndarray) -> np.ndarray:
    """Backbone features of `inputs` in evaluation mode (no augmentation), (N, D)."""
    outs = [self._embed(variables, self._padded(inputs, a, b, s))[:b - a]
            for a, b, s in self._chunks(len(inputs))]
    return np.concatenate(jax.device_get(outs))

  def accuracy(self, variables: dict[str, Any], inputs: Optional[np.ndarray],
               labels: Optional[np.ndarray]) -> float:
    """Accuracy of argmax p(l|x) on (inputs, labels); NaN when there are none."""
    if inputs is None or len(inputs) == 0:
      return float("nan")
    total = 0
    for a, b, s in self._chunks(len(inputs)):
      valid = np.arange(s) < b - a
      total = total + self._correct(variables, self._padded(inputs, a, b, s),
                                    self._padded(labels, a, b, s), valid)
    return int(total) / len(inputs)

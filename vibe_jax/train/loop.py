"""The one training loop: the baseline, VIBE, self-supervised pretraining and every
future defense run through `fit`.

`fit` resumes from the stage's newest readable checkpoint, places the state
(replicated, donated to each step) and the batch source's arrays on the mesh, and
runs steps `start .. num_steps - 1`. Step t draws its key as fold_in(key, t)
inside jit (no host sync) and reads the batch the source gives for t, so a resumed
run repeats an uninterrupted one exactly (and reads no batch before t). Between
boundaries (log lines, checkpoints, hook periods) up to `steps_per_call` steps run
as one `lax.scan` call. Metrics stay on the device until a log
step, where they are averaged into one JSON line; hooks run before steps (VIBE's
E-step) and at log steps (the kNN monitor).
"""

import dataclasses
import functools
import json
import logging
import math
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import ml_collections
import tqdm

from vibe_jax import files, parallel
from vibe_jax.checkpoint import Checkpointer
from vibe_jax.report import JsonLines
from vibe_jax.train.batches import BatchSource

__all__ = ["LoopSettings", "Hook", "fit", "stage_seconds"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """How long a stage runs and how often it logs and checkpoints."""

  num_steps: int
  log_every: int
  checkpoint_every: int
  max_to_keep: int = 3
  progress_bar: bool = True
  # At most this many steps per call of one compiled program (a lax.scan over the
  # steps): a small model's step is shorter than its Python dispatch.
  steps_per_call: int = 1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, num_steps: int | None = None,
                  *, backbone: bool | None = None) -> "LoopSettings":
    """The run's shared settings (`log_every`, `checkpoint`, `progress_bar`,
    `steps_per_call`) with `num_steps` (default `config.num_steps`).

    `steps_per_call` 0 (auto) is 1 for a stage that trains a backbone (`backbone`,
    default: the config has one and not frozen features; its steps are long, and
    the progress bar moves each step) and `AUTO_STEPS_PER_CALL` for one on
    features."""
    per_call = config.steps_per_call
    if not per_call:
      trains_backbone = (bool(config.model.backbone) and not config.model.frozen_features
                         if backbone is None else backbone)
      per_call = 1 if trains_backbone else AUTO_STEPS_PER_CALL
    return cls(num_steps=config.num_steps if num_steps is None else num_steps,
               log_every=config.log_every, checkpoint_every=config.checkpoint.every,
               max_to_keep=config.checkpoint.max_to_keep,
               progress_bar=config.progress_bar, steps_per_call=per_call)


# The quickstart's stages (1,500 steps each on 64 features, warm) took 3.9 s and
# 5.2 s with one call per step, 0.8 s and 1.9 s with 250-step calls (2-core CPU,
# README "Start-up").
AUTO_STEPS_PER_CALL = 250


class Hook:
  """Something a stage does besides its steps; the default methods do nothing."""

  def before_step(self, step: int, state: Any, arrays: dict[str, jax.Array]) -> Any:
    """Runs before step `step` with the source's device arrays; returns the state."""
    del step, arrays
    return state

  def on_log(self, step: int, state: Any, row: dict[str, Any]) -> None:
    """Runs at a log step (`step` steps done) and may add figures to `row`."""
    del step, state, row

  def period(self) -> int:
    """`before_step` acts only before steps that are multiples of this (0: never);
    the loop runs the steps between them as one call. A hook that overrides
    `before_step` and not this acts at every step."""
    return 0 if type(self).before_step is Hook.before_step else 1


def _seconds_path(workdir: pathlib.Path, name: str) -> pathlib.Path:
  return workdir / name / "seconds.json"


def _read_seconds(workdir: pathlib.Path, name: str) -> dict[str, float]:
  path = _seconds_path(workdir, name)
  try:
    return json.loads(path.read_text()) if path.exists() else {}
  except ValueError:
    return {}


def stage_seconds(workdir: pathlib.Path, name: str) -> float:
  """Seconds stage `name` has trained, added up over every run that resumed it
  (recorded at each checkpoint: the time to its newest one)."""
  seconds = _read_seconds(workdir, name)
  return max(seconds.values(), default=0.0)


class _Bar:
  """A tqdm progress bar on a terminal, plain log lines otherwise (so a redirected
  run's log has no carriage returns). The bar starts after the first step, so the
  first step's compilation does not inflate the ETA."""

  def __init__(self, name: str, start: int, total: int, enabled: bool):
    self._name, self._start, self._total = name, start, total
    self._tty = enabled and sys.stderr.isatty()
    self._bar = None

  def step(self, done: int) -> None:
    if not self._tty:
      return
    if self._bar is None:
      self._bar = tqdm.tqdm(desc=self._name, initial=done, total=self._total,
                            mininterval=1.0, dynamic_ncols=True)
    else:
      self._bar.update(done - self._bar.n)

  def log(self, row: dict) -> None:
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{row['loss']:.4f}")
    elif not self._tty:
      _log.info("[%s] step %d/%d: loss %.4f", self._name, row["step"], self._total,
                row["loss"])

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _mean_metrics(window: list[dict]) -> dict[str, float]:
  """The mean of each metric over the window's steps (a fused call's metrics have
  one value per step). On the host: one transfer, no programs to compile."""
  window = jax.device_get(window)
  return jax.tree_util.tree_map(
      lambda *v: float(np.mean(np.concatenate([np.ravel(x) for x in v]))), *window)


def _steps_per_call(settings: LoopSettings, hooks: Sequence[Hook], fusable: bool) -> int:
  """K: the largest divisor of every boundary period (logging, checkpoints, the
  hooks' periods) up to `settings.steps_per_call`, so that a K-step call that starts
  at a multiple of K never crosses a step where something else happens."""
  if not fusable:
    return 1
  period = math.gcd(settings.log_every, settings.checkpoint_every,
                    *(h.period() for h in hooks))
  return max(k for k in range(1, min(period, settings.steps_per_call) + 1)
             if period % k == 0)


def fit(*, name: str, state: Any, step_fn: Callable[[Any, dict], tuple[Any, dict]],
        source: BatchSource, settings: LoopSettings, workdir: pathlib.Path,
        log: JsonLines, key: jax.Array, hooks: Sequence[Hook] = (),
        state_sharding: Callable[[Any, Any], Any] | None = None) -> Any:
  """Runs stage `name` to `settings.num_steps` steps from its last checkpoint.

  Args:
    name: the stage; checkpoints go to `workdir/<name>/checkpoints`.
    state: the stage's initial state (a `TrainState`), used when none is saved.
    step_fn: the pure step `(state, batch) -> (state, metrics)`; batch has the
      source's arrays at this step's rows, "index" and "key".
    source: where batches come from.
    settings: length, logging and checkpointing.
    workdir: the run's directory.
    log: called with each JSON-line row.
    key: the stage's base key; step t uses fold_in(key, t).
    hooks: called before steps and at log steps, in order.
    state_sharding: `(mesh, state) -> shardings` of the state's leaves (e.g. an
      ensemble's members split over the devices); default every leaf replicated.

  Returns:
    The state after `settings.num_steps` steps.
  """
  began = time.time()
  ckpt = Checkpointer(workdir / name / "checkpoints", max_to_keep=settings.max_to_keep)
  state, restored = ckpt.restore_or(state)
  start = int(state.step)
  if restored is not None:
    _log.info("[%s] resuming from the checkpoint at step %d", name, start)
  log.truncate(name, start)  # rows past the checkpoint are written again below
  seconds = {k: v for k, v in _read_seconds(workdir, name).items() if int(k) <= start}
  base_seconds = seconds.get(str(start), 0.0)
  mesh = parallel.data_mesh()
  everywhere, rows = parallel.replicated(mesh), parallel.batch_rows(mesh)
  parallel.check_batch_size(source.batch_size, mesh)
  placed = everywhere if state_sharding is None else state_sharding(mesh, state)
  state = jax.device_put(state, placed)
  arrays = source.place(mesh)

  def one_step(state, arrays, step_input):
    batch = {**source.gather(arrays, step_input), "key": jax.random.fold_in(key, state.step)}
    return step_fn(state, batch)

  step = jax.jit(one_step, donate_argnums=0, in_shardings=(placed, everywhere, rows),
                 out_shardings=(placed, everywhere))

  @functools.partial(jax.jit, donate_argnums=0,
                     in_shardings=(placed, everywhere, parallel.stacked_batch_rows(mesh)),
                     out_shardings=(placed, everywhere))
  def steps(state, arrays, step_inputs):  # K steps; metrics stacked (K, ...)
    return jax.lax.scan(lambda s, x: one_step(s, arrays, x), state, step_inputs)

  per_call = _steps_per_call(settings, hooks, getattr(source, "fusable", False))
  window = []  # metrics of the steps since the last log line, averaged there
  bar = _Bar(name, start, settings.num_steps, settings.progress_bar)
  inputs = source.steps(start, settings.num_steps)
  t = start
  while t < settings.num_steps:
    for hook in hooks:
      state = hook.before_step(t, state, arrays)
    # Each process holds only its rows of the batch; together they form one array.
    if per_call > 1 and t % per_call == 0 and t + per_call <= settings.num_steps:
      local = np.stack([next(inputs) for _ in range(per_call)])
      state, metrics = steps(state, arrays, parallel.global_batch(local, mesh, stacked=True))
      done = t + per_call
    else:
      state, metrics = step(state, arrays, parallel.global_batch(next(inputs), mesh))
      done = t + 1
    window.append(metrics)  # device arrays: no host sync until the log line
    t = done
    bar.step(done)
    if done % settings.log_every == 0 or done == settings.num_steps:
      row = {"stage": name, "step": done, "event": "train", **_mean_metrics(window)}
      window = []
      for hook in hooks:
        hook.on_log(done, state, row)
      bar.log(row)
      log(row)
    if done % settings.checkpoint_every == 0 or done == settings.num_steps:
      ckpt.save(done, state)
      seconds[str(done)] = round(base_seconds + time.time() - began, 2)
      files.write_json(_seconds_path(workdir, name), seconds)
  bar.close()
  ckpt.close()
  return state

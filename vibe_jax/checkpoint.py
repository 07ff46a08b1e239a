"""Orbax checkpoints that resume after preemption and survive a corrupt save.

`Checkpointer.restore_or(template)` restores the newest checkpoint that reads back;
a step that fails to restore is renamed `corrupt-<step>-<time>` beside the others
(never deleted), with a warning, and the next older one is tried. Orbax writes each
step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints intact; `max_to_keep` only removes old
steps after a newer one has been committed.
"""

import logging
import os
import pathlib
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]

_log = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores one pytree (a `TrainState`) under `directory`."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self.directory.mkdir(parents=True, exist_ok=True)
    self._max_to_keep = max_to_keep
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
    return ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    """Returns the newest committed step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as `step` (asynchronously; see `wait`)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def wait(self) -> None:
    """Blocks until pending saves are committed."""
    self._manager.wait_until_finished()

  def restore_or(self, template: Any) -> tuple[Any, Optional[int]]:
    """Restores the newest readable checkpoint, else returns `template`.

    Args:
      template: a pytree with the structure, shapes and dtypes to restore.

    Returns:
      (state, step) where step is None when nothing was restored.
    """
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as error:  # noqa: BLE001 -- any read failure means corrupt
        moved = self._quarantine(step)
        _log.warning(
            "Checkpoint step %d in %s could not be restored (%s: %s); moved it to %s "
            "and falling back to the previous checkpoint.",
            step, self.directory, type(error).__name__, error, moved)
        continue
      _log.info("Restored checkpoint step %d from %s", step, self.directory)
      return state, step
    return template, None

  def _quarantine(self, step: int) -> pathlib.Path:
    """Renames a bad step directory out of orbax's view, keeping its files."""
    source = self.directory / str(step)
    target = self.directory / f"corrupt-{step}-{int(time.time())}"
    if source.exists():
      source.rename(target)
    self._manager.close()
    self._manager = self._new_manager()
    return target

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

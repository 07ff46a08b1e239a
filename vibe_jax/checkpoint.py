"""Orbax checkpoints that resume after preemption and survive a corrupt save.

`Checkpointer.restore_or(template)` restores the newest checkpoint that reads back
and matches its checksum; a step that fails to restore or to verify is renamed
`corrupt-<step>-<time>` beside the others (never deleted), with a warning, and the
next older one is tried. Orbax writes each step to a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoints
intact; `max_to_keep` only removes old steps after a newer one has been committed.

Checksums: orbax reads flipped bytes inside a data file without error, returning
wrong values. So `save` records a SHA-256 over every leaf of the state (its path,
dtype, shape and raw bytes, in `tree_flatten_with_path` order) in
`<directory>/checksums/<step>.json` as {"step": ..., "sha256": ..., "leaves": ...},
and `restore_or` recomputes it from the restored state. A step whose checksum
differs is set aside like any other corrupt step; a step without a record (saved
by an older version) is restored with a warning that it could not be verified.
Records of steps orbax no longer has are removed on `save` and `restore_or`.
"""

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from vibe_jax import files

__all__ = ["Checkpointer", "state_checksum"]

_log = logging.getLogger(__name__)


def state_checksum(state: Any) -> tuple[str, int]:
  """Hashes the values of a pytree on the host.

  Args:
    state: a pytree of arrays (device or host).

  Returns:
    (hex SHA-256 digest, number of leaves). The digest covers each leaf's path,
    dtype, shape and bytes, so equal digests mean equal values bit for bit.
  """
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  for path, leaf in leaves:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)  # typed PRNG keys have no numpy form
    array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    # The header separates leaves, so moving bytes between leaves changes the hash.
    header = f"{jax.tree_util.keystr(path)}\0{array.dtype}\0{array.shape}\n"
    digest.update(header.encode())
    digest.update(array.reshape(-1).view(np.uint8))
  return digest.hexdigest(), len(leaves)


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
    """Saves `state` as `step` with its checksum (asynchronously; see `wait`).

    Args:
      step: the step number; a step already saved is skipped.
      state: the pytree to save.
    """
    if step in self._manager.all_steps():
      return
    # Hashed before orbax takes the state: its background write sees the same
    # values, and the caller may donate or overwrite the arrays afterwards.
    digest, leaves = state_checksum(state)
    if self._manager.save(step, args=ocp.args.StandardSave(state)):
      # Written while orbax commits in the background: a crash before the commit
      # leaves a record with no step, which the next prune removes.
      self._write_checksum(step, digest, leaves)
      self._prune_checksums(keep=(step,))

  def wait(self) -> None:
    """Blocks until pending saves are committed."""
    self._manager.wait_until_finished()

  def restore_or(self, template: Any) -> tuple[Any, Optional[int]]:
    """Restores the newest readable, verified checkpoint, else returns `template`.

    Args:
      template: a pytree with the structure, shapes and dtypes to restore.

    Returns:
      (state, step) where step is None when nothing was restored.
    """
    self._prune_checksums()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as error:  # noqa: BLE001 -- any read failure means corrupt
        reason = f"could not be restored ({type(error).__name__}: {error})"
        self._set_aside(step, reason)
        continue
      expected = self._read_checksum(step)
      if expected is None:
        _log.warning(
            "Checkpoint step %d in %s has no usable checksum record (saved by an older "
            "version?); its values could not be verified.", step, self.directory)
      else:
        found, _ = state_checksum(state)
        if found != expected:
          self._set_aside(step, f"failed verification: checksum mismatch (expected "
                          f"{expected[:12]}, found {found[:12]})")
          continue
      _log.info("Restored checkpoint step %d from %s", step, self.directory)
      return state, step
    return template, None

  def _set_aside(self, step: int, reason: str) -> None:
    """Quarantines `step` and warns why."""
    moved = self._quarantine(step)
    _log.warning("Checkpoint step %d in %s %s; moved it to %s and falling back to "
                 "the previous checkpoint.", step, self.directory, reason, moved)

  def _quarantine(self, step: int) -> pathlib.Path:
    """Renames a bad step directory out of orbax's view, keeping its files."""
    source = self.directory / str(step)
    target = self.directory / f"corrupt-{step}-{int(time.time())}"
    if not files.is_writer():
      # Every process reads the same files and sets the same step aside; process 0
      # alone moves it.
      return target
    if source.exists():
      source.rename(target)
    # The record goes with the step, so a new save at this step gets its own.
    record = self._checksum_path(step)
    if record.exists():
      if target.is_dir():
        os.replace(record, target / "checksum.json")
      else:
        record.unlink(missing_ok=True)
    self._manager.close()
    self._manager = self._new_manager()
    return target

  def _checksum_path(self, step: int) -> pathlib.Path:
    return self.directory / "checksums" / f"{step}.json"

  def _write_checksum(self, step: int, digest: str, leaves: int) -> None:
    if not files.is_writer():  # orbax saves with every process; the record is one file
      return
    path = self._checksum_path(step)
    path.parent.mkdir(exist_ok=True)
    # Temp file + rename, so a reader never sees a half-written record.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{step}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      json.dump({"step": step, "sha256": digest, "leaves": leaves}, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, path)

  def _read_checksum(self, step: int) -> Optional[str]:
    """The recorded digest of `step`, or None when there is no usable record."""
    try:
      record = json.loads(self._checksum_path(step).read_text())
    except (OSError, ValueError):
      return None
    if not isinstance(record, dict) or record.get("step") != step:
      return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) else None

  def _prune_checksums(self, keep: tuple[int, ...] = ()) -> None:
    """Removes records of steps that orbax deleted (`max_to_keep`) or never
    committed."""
    folder = self.directory / "checksums"
    if not folder.is_dir() or not files.is_writer():
      return
    live = set(self._manager.all_steps()) | set(keep)
    for path in folder.glob("*.json"):
      if path.stem.isdigit() and int(path.stem) not in live:
        path.unlink(missing_ok=True)

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

"""Files that are replaced whole are written atomically: a temporary file in the
same directory, then `os.replace`, so a reader (or a run killed mid-write) sees the
old file or the new one, never half of one.

With several processes (multi-host JAX) every process runs the same program on
one shared workdir: only process 0 writes (`is_writer`); the others' writes are
no-ops, so no file is written twice or torn by two writers.
"""

import json
import os
import pathlib
import tempfile
from typing import Any, Callable

import jax

__all__ = ["is_writer", "write_atomic", "write_text", "write_json", "save_with"]


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 of a multi-process run
  (the only process otherwise)."""
  return jax.process_index() == 0


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Replaces `path` with `data` in one step (process 0 only)."""
  if not is_writer():
    return
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Replaces `path` with `text` (UTF-8) in one step."""
  write_atomic(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> None:
  """Replaces `path` with `value` as JSON in one step."""
  write_text(path, json.dumps(value, indent=indent) + "\n")


def save_with(path: str | os.PathLike, save: Callable[[str], None]) -> None:
  """Runs `save(temporary path)` (e.g. np.save, savefig) then renames it to `path`
  (process 0 only)."""
  if not is_writer():
    return
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
  os.close(fd)
  try:
    save(tmp)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise

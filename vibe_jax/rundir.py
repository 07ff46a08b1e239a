"""A workdir belongs to one run: its fingerprint, and a lock while a run uses it.

`run.json` records, at the first run, a fingerprint of everything that determines
the results: the resolved config without presentation keys (`PRESENTATION`), and
the data's identity (sizes and a digest of labels, poison flags and a sample of
inputs); the commit is recorded but may differ. A later run whose fingerprint
differs stops before touching anything, naming the keys that differ and the two
ways forward: a new workdir, or `--fresh`, which moves the old run's files into
`previous-<time>/` (nothing is deleted).

`WorkdirLock` holds an exclusive `fcntl` lock on `workdir/.lock` for the run; a
second run on the same workdir stops at once naming the process that holds it. The
kernel drops the lock when its process dies, so a lock file left by a killed run
is taken over (with a warning naming the dead process).
"""

import fcntl
import hashlib
import json
import logging
import os
import pathlib
import socket
import time
from typing import Any, Optional, Sequence

import numpy as np

from vibe_jax import files
from vibe_jax.errors import InputError

__all__ = ["PRESENTATION", "config_fingerprint", "data_identity", "check_run",
           "record_run", "move_aside", "WorkdirLock"]

# Keys that change how a run looks, not what it computes. `defenses` and
# `evaluators` choose which rows a run reports; each defense keeps its own
# checkpoints, so adding one to a finished run is safe. Where the images live
# (`data.placement` and its settings) changes the speed, not the batches; the
# evaluation batch changes how many rows a pass holds, not what each row gives.
PRESENTATION = ("progress_bar", "log_every", "checkpoint.every", "checkpoint.max_to_keep",
                "ssl.knn_every", "defenses", "evaluators", "data.skip_bad_images",
                "data.placement", "data.device_share", "data.prefetch", "eval_batch_size")
_RUN_FILE = "run.json"
# What a run leaves in its workdir; `--fresh` moves these aside.
_RUN_FILES = ("run.json", "config.json", "results.json", "results.md", "metrics.jsonl",
              "curves.png", "comparison.png", "poisoning.json", "leiden.json", "features.npz", "features.json",
              "pseudo_labels.npy", "error.log", "baseline", "vibe", "ssl")

_log = logging.getLogger(__name__)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, f"{name}."))
    else:
      out[name] = value
  return out


def config_fingerprint(config_json: dict) -> dict[str, Any]:
  """The flattened config without the presentation keys."""
  return {k: v for k, v in _flatten(config_json).items() if k not in PRESENTATION}


def data_identity(arrays: dict[str, Optional[np.ndarray]]) -> dict[str, Any]:
  """Shapes, and a SHA-256 of labels, flags and up to 1,000 evenly spaced input rows."""
  digest = hashlib.sha256()
  shapes = {}
  for name in sorted(arrays):
    a = arrays[name]
    if a is None:
      continue
    shapes[name] = list(a.shape)
    if name.endswith("features") and len(a) > 1000:
      a = a[np.linspace(0, len(a) - 1, 1000).astype(int)]
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(a).tobytes())
  return {"shapes": shapes, "sha256": digest.hexdigest()}


def _differences(old: dict, new: dict, defaults: Optional[dict] = None) -> list[str]:
  keys = sorted(set(old) | set(new))
  missing = object()
  out = []
  for k in keys:
    a, b = old.get(k, missing), new.get(k, missing)
    if a is missing and defaults is not None and k in defaults and b == defaults[k]:
      continue  # a key added by a later version, at the default that keeps the old behaviour
    if a != b:
      show = lambda v: "(absent)" if v is missing else json.dumps(v)
      out.append(f"{k} {show(a)} -> {show(b)}")
  return out


def _refuse(workdir: pathlib.Path, what: str, diffs: list[str]) -> None:
  shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
  raise InputError(f"workdir {str(workdir)!r} holds another run ({what} differ: {shown}); "
                   "use a new --workdir, or pass --fresh to move the old run's files into "
                   "previous-<time>/ and start again")


def check_run(workdir: pathlib.Path, fingerprint: dict, data: Optional[dict] = None,
              defaults: Optional[dict] = None) -> None:
  """Raises InputError if `workdir/run.json` records a different config fingerprint
  (or, when `data` is given, a different data identity). A key the recorded run
  lacks (added to the config by a later version) counts as a difference only when
  its value is not its default (`defaults`, a fingerprint of the default config):
  new keys default to the behaviour earlier versions had, so a run started before
  an upgrade resumes after it."""
  path = workdir / _RUN_FILE
  if not path.exists():
    return
  try:
    recorded = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise InputError(f"{str(path)!r} is unreadable ({error}); use a new --workdir or "
                     "--fresh") from error
  diffs = _differences(recorded.get("fingerprint", {}), fingerprint, defaults)
  if diffs:
    _refuse(workdir, "config values", diffs)
  if data is not None and recorded.get("data") not in (None, data):
    _refuse(workdir, "the data", _differences(
        {"data": recorded["data"]["sha256"], **{f"shape of {k}": v for k, v in
                                                recorded["data"]["shapes"].items()}},
        {"data": data["sha256"], **{f"shape of {k}": v for k, v in data["shapes"].items()}}))


def record_run(workdir: pathlib.Path, fingerprint: dict, data: dict, commit: str) -> None:
  """Writes `run.json` for a new run (an existing one is kept: it matched)."""
  path = workdir / _RUN_FILE
  if not path.exists():
    files.write_json(path, {"fingerprint": fingerprint, "data": data, "commit": commit,
                            "created": time.strftime("%Y-%m-%d %H:%M:%S")})


def move_aside(workdir: pathlib.Path, more: Sequence[str] = ()) -> Optional[pathlib.Path]:
  """Moves an earlier run's files (the common ones and the names in `more`: the
  defenses' own stage directories) into `workdir/previous-<time>/`; returns it
  (None when there was nothing to move)."""
  names = dict.fromkeys([*_RUN_FILES, *more])
  present = [workdir / name for name in names if (workdir / name).exists()]
  if not present or not files.is_writer():
    return None
  target = workdir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
  target.mkdir()
  for path in present:
    path.rename(target / path.name)
  _log.warning("moved the previous run's files to %s", target)
  return target


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """An exclusive lock on a workdir for the life of a run (a context manager)."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / ".lock"
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    if not files.is_writer():
      # A multi-process run is one run: process 0 holds the lock for all of them.
      return self
    self._file = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      raise InputError(f"workdir {str(self.path.parent)!r} is in use by {holder}; wait for "
                       "it to finish or use another --workdir") from error
    self._file.seek(0)
    previous = self._file.read().strip()
    if previous:
      pid = previous.split("pid ")[-1].split()[0] if "pid " in previous else ""
      still = pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid()
      _log.warning("taking over the lock of a run that ended without releasing it (%s%s)",
                   previous, ", still alive but not holding it" if still else ", gone")
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    self._file.flush()
    return self

  def __exit__(self, *exc) -> None:
    # Removed before unlocking: a lock file that exists and is not locked was left
    # by a run that died.
    if self._file is None:
      return
    self.path.unlink(missing_ok=True)
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()

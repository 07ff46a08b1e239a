"""Command line: `python -m vibe_jax.main --config=configs/NAME.py --workdir=DIR`.

Config values are overridden with `--config.a.b=value`; `--fresh` moves an earlier
run's files in the workdir aside instead of refusing a workdir that holds another
run. Several processes (hosts, or one per GPU) run the same command and join through
JAX's multi-controller runtime (`vibe_jax.parallel.initialize`): `--distributed=auto`
connects when `--coordinator_address/--num_processes/--process_id`, the environment
(VIBE_JAX_COORDINATOR_ADDRESS, ...) or a detected cluster (SLURM, a TPU pod slice)
says so; process 0 alone writes files. Kept short on purpose: the logic lives in `vibe_jax.experiment`, importable and
tested.

Exit codes: 0 done; 2 bad input (config, data, workdir, disk), with one line on
stderr saying what is wrong and the full traceback in `<workdir>/error.log`; 1 a
failure inside vibe_jax (a bug), with the traceback and where to report it.
"""

import errno
import logging as std_logging
import os
import pathlib
import sys
import time
import traceback

from vibe_jax import runtime

runtime.configure_xla_flags()  # before any backend starts: XLA reads the flags once
runtime.configure_allocator()  # before XLA's threads allocate

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import tqdm

from vibe_jax import errors, experiment, files, parallel, report
# pylint: enable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
_FRESH = flags.DEFINE_bool("fresh", False, "Move an earlier run's files in --workdir to "
                           "previous-<time>/ instead of refusing a workdir of another run.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", list(parallel.MODES),
    "Join a multi-process run: auto (when the flags below, VIBE_JAX_* variables or a "
    "SLURM / TPU-pod environment say so), on (and fail otherwise), off.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 in a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index, 0 .. num_processes - 1.")
_TIMEOUT = flags.DEFINE_float("distributed_timeout", 300.0,
                              "Seconds to wait for the coordinator and the other processes.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "Folder of JAX's persistent compilation cache, or 'off' (default: "
    "$VIBE_JAX_COMPILATION_CACHE, else ~/.cache/vibe_jax/jax); reruns load compiled "
    "steps from it.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors of the environment the user controls: stopped with one line, exit 2.
_USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                errno.ENOTDIR, errno.EISDIR, errno.ENOENT}
_REPORT = ("this is a bug in vibe_jax: please report it to the maintainers (the "
           "project's issue tracker) with the traceback above")


def _die(message: str, code: int = 2) -> None:
  """One line on stderr, then exit `code`."""
  print(" ".join(str(message).split("\n")), file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv):
  """absl's parser, with config errors (unknown key, bad value) as one clear line."""
  for i, arg in enumerate(argv):  # a missing file first: overrides would hide it
    path = arg[len("--config="):] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path is not None and not os.path.isfile(path.split(":")[0]):
      _die(f"FATAL config error: config file {path!r} does not exist")
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _die(f"FATAL flags error: {error} (pass --helpshort for help)")
  except AttributeError as error:  # ml_collections: a key the config lacks
    if "get_config" in str(error):
      _die("FATAL config error: cannot load --config: the file has no get_config()")
    message = str(error.args[0] if error.args else error)
    key, _, hint = message.encode().decode("unicode_escape").strip("'").partition("\n")
    _die(f"FATAL config error: unknown config key {key.strip(chr(39))!r}. {hint}")
  except Exception as error:  # noqa: BLE001 -- a config file that fails to load
    _die(f"FATAL config error: cannot load --config: {type(error).__name__}: {error}")


class _TqdmHandler(std_logging.Handler):
  """Writes log lines through tqdm, so they do not garble a progress bar."""

  def emit(self, record):
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    tqdm.tqdm.write(f"{record.levelname[0]} {stamp} {record.getMessage()}", file=sys.stderr)


def _setup_logging():
  """Our INFO lines on stderr; the libraries' INFO chatter (orbax) hidden unless
  the user asks for it with --verbosity."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  ours = std_logging.getLogger("vibe_jax")
  ours.setLevel(std_logging.INFO)
  if not any(isinstance(h, _TqdmHandler) for h in ours.handlers):  # once per process
    ours.addHandler(_TqdmHandler())
  ours.propagate = False


def _error_log(workdir: str, text: str) -> str:
  """Writes `text` to `workdir/error.log` if the workdir is a writable directory;
  returns where it went (for the one-line message)."""
  path = pathlib.Path(workdir) / "error.log"
  try:
    if path.parent.is_dir() and files.is_writer():
      path.write_text(text)
      return f" (traceback in {path})"
  except OSError:
    pass
  return ""


def main(argv):
  """Runs the experiment of --config in --workdir and prints its table."""
  if len(argv) > 1:
    _die(f"FATAL flags error: unexpected arguments {argv[1:]}")
  _setup_logging()
  config = _CONFIG.value
  try:
    config.get("seed")  # ml_collections defers a file's load error to first use
  except Exception as error:  # noqa: BLE001 -- whatever the config file raised
    _die(f"FATAL config error: cannot load --config: {type(error).__name__}: {error}")
  workdir = _WORKDIR.value
  runtime.enable_compilation_cache(_CACHE.value)
  try:
    topology = parallel.initialize(
        mode=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        timeout_s=_TIMEOUT.value)
    if topology.process_count > 1:
      std_logging.getLogger("vibe_jax").info(
          "process %d of %d (%s), %d of %d devices", topology.process_index,
          topology.process_count, topology.how, topology.local_device_count,
          topology.device_count)
    results = experiment.train_and_evaluate(config, workdir, fresh=_FRESH.value)
  except errors.InputError as error:
    where = _error_log(workdir, traceback.format_exc())
    _die(f"FATAL input error: {error}{where}")
  except OSError as error:
    if error.errno not in _USER_ERRNOS:
      raise
    where = _error_log(workdir, traceback.format_exc())
    name = f" {error.filename!r}" if error.filename else ""
    _die(f"FATAL: cannot read or write{name}: {error.strerror}{where}")
  if files.is_writer():
    print(report.markdown_table(results["rows"]))
    print(f"results in {os.path.join(workdir, 'results.json')}")


def run():
  """Entry point: absl with our flag parser; an unexpected exception is a bug."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit:
    raise
  except Exception:  # noqa: BLE001 -- everything not classified above is a bug
    traceback.print_exc()
    _die(f"FATAL internal error: {_REPORT}", code=1)


if __name__ == "__main__":
  run()

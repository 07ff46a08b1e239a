"""Command line: `python -m vibe_jax.main --config=configs/NAME.py --workdir=DIR`.

Config values are overridden with `--config.a.b=value`. Kept short on purpose: the
logic lives in `vibe_jax.experiment`, importable and tested.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vibe_jax import errors, experiment, report

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """absl's parser, with config errors (unknown key, bad value) as one clear line."""
  for i, arg in enumerate(argv):  # a missing file first: overrides would hide it
    path = arg[len("--config="):] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if path is not None and not os.path.isfile(path.split(":")[0]):
      sys.exit(f"FATAL config error: config file {path!r} does not exist")
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(f"FATAL flags error: {error}\nPass --helpshort or --helpfull for help.")
  except AttributeError as error:  # ml_collections: a key the config lacks
    message = str(error.args[0] if error.args else error)
    key, _, hint = message.encode().decode("unicode_escape").strip("'").partition("\n")
    sys.exit(f"FATAL config error: unknown config key {key.strip(chr(39))!r}. {hint}")
  except (KeyError, TypeError, ValueError) as error:
    sys.exit(f"FATAL config error: {error}")


def _setup_logging():
  """Our INFO lines on stderr; the libraries' INFO chatter (orbax) hidden unless
  the user asks for it with --verbosity."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("vibe_jax").setLevel(std_logging.INFO)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _setup_logging()
  config = _CONFIG.value
  try:
    config.get("seed")  # ml_collections defers a file's load error to first use
  except OSError as error:
    sys.exit(f"FATAL config error: cannot load --config: {error}")
  try:
    results = experiment.train_and_evaluate(config, _WORKDIR.value)
  except errors.InputError as error:
    sys.exit(f"FATAL input error: {error}")
  print(report.markdown_table(results["rows"]))
  print(f"results in {os.path.join(_WORKDIR.value, 'results.json')}")


def run():
  """Entry point: absl with our flag parser."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

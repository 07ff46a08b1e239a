"""Runs many command lines of `vibe_jax.main` in one process (the malformed-input
tests): each case is one full `main.run()` with its own argv, its stdout and stderr
captured and its exit code recorded. Starting Python and importing JAX for each of
~80 refusals cost most of the fast selection's time; the refusals themselves take
milliseconds.

  python -m tests.cli_driver < cases.json > results.json

Input: a JSON list of argv lists (without the program name). Output: a JSON list of
{"code", "stdout", "stderr"} in the same order.
"""

import contextlib
import io
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

from vibe_jax import main  # noqa: E402


def run_one(argv: list[str]) -> dict:
  """One command line through `main.run()`, with fresh flag values."""
  flags.FLAGS.unparse_flags()  # the previous case's values must not leak into this one
  # ml_collections defines one flag per `--config.key=` override while parsing; the
  # next parse defines them again, which absl refuses.
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  # ml_collections loads the config file with SourceFileLoader.load_module into
  # sys.modules["config_config"], which re-executes into an existing module: a
  # file without get_config() would inherit the previous case's.
  sys.modules.pop("config_config", None)
  out, err, code = io.StringIO(), io.StringIO(), 0
  sys.argv = ["vibe_jax.main", *argv]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      main.run()
    except SystemExit as stop:
      code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
      if isinstance(stop.code, str):  # sys.exit("message") prints it, as Python does
        print(stop.code, file=sys.stderr)
  return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
  cases = json.load(sys.stdin)
  results = [run_one(argv) for argv in cases]
  sys.stdout.write(json.dumps(results))

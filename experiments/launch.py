"""What the multi-host launchers (tpu_pod.py, slurm.py) share.

Argument parsing with the launcher's own flags first and `--config.KEY=VALUE`
overrides forwarded to `vibe_jax.main`, the main command itself, shell quoting for
printing, the global-batch check, and bad input as one line on stderr with exit 2.
Standard library only, so that a launcher runs on a laptop without JAX; it is
imported as `launch` because `python experiments/NAME.py` puts experiments/ first on
sys.path (experiments/ is not a package, like sweep.py).
"""

import argparse
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import NoReturn

__all__ = ["ROOT", "Parser", "die", "parse", "main_argv", "quote", "shell_line",
           "batch_note", "count", "run"]

ROOT = pathlib.Path(__file__).resolve().parents[1]

# `--config.a.b=value`: what absl's config_flags accepts as an override.
_OVERRIDE = re.compile(r"^--config\.[A-Za-z_][\w.]*=")
# `--flag=value`: printed as `--flag=` + the quoted value, which reads better
# than quoting the whole argument and means the same to the shell.
_FLAG_VALUE = re.compile(r"^(--[\w.-]+=)(.*)$", re.DOTALL)
_BATCH_KEYS = ("batch_size", "ssl.batch_size")


def die(message: str) -> NoReturn:
  """Prints `<launcher>: error: message` as one line on stderr and exits 2.

  Args:
    message: what is wrong and, where it helps, what to do instead.
  """
  prog = os.path.basename(sys.argv[0]) or "launcher"
  print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr,
        flush=True)
  sys.exit(2)


class Parser(argparse.ArgumentParser):
  """An ArgumentParser with the flags every launcher has, and one-line errors."""

  def __init__(self, description: str, python: str):
    """Adds --config, --workdir, --python and --dry_run.

    Args:
      description: the launcher's module docstring (shown by --help).
      python: the default interpreter on the machines that run main.
    """
    super().__init__(description=description, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    self.add_argument("--config", required=True,
                      help="configs/NAME.py[:args], relative to the repo root")
    self.add_argument("--workdir", required=True, help="the run's directory")
    self.add_argument("--python", default=python,
                      help="interpreter on the hosts (default: %(default)s)")
    self.add_argument("--dry_run", action="store_true",
                      help="print the commands instead of running them")

  def error(self, message: str) -> NoReturn:
    """argparse's errors as one line (its default adds the usage), exit 2."""
    die(f"{message} (see --help)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None):
  """Parses the launcher's flags; the rest must be config overrides.

  Args:
    parser: the launcher's parser.
    argv: the arguments (default: sys.argv[1:]).

  Returns:
    (args, overrides): the parsed flags, and the `--config.KEY=VALUE` arguments in
    their order. A bare `--` (as with sweep.py) is dropped.
  """
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a != "--"]
  for arg in overrides:
    if not _OVERRIDE.match(arg):
      die(f"{arg!r} is not a config override: after the launcher's flags only "
          "--config.KEY=VALUE may follow (forwarded to vibe_jax.main)")
  config_file = args.config.split(":")[0]
  if not (ROOT / config_file).is_file():
    die(f"config file {config_file!r} does not exist (paths are relative to the "
        f"repo root {ROOT})")
  return args, overrides


def main_argv(python: str, config: str, workdir: str, overrides: list[str]) -> list[str]:
  """The `vibe_jax.main` command every process runs, with the runtime switched on.

  Args:
    python: the interpreter.
    config: the --config value.
    workdir: the --workdir value (the same on every process).
    overrides: `--config.KEY=VALUE` arguments.

  Returns:
    The argv. `--distributed=on` makes a missing cluster an error instead of a
    silent single-process run that would train on one host's devices only.
  """
  return [python, "-m", "vibe_jax.main", f"--config={config}", f"--workdir={workdir}",
          "--distributed=on", *overrides]


def quote(arg: str) -> str:
  """shlex.quote, except that a leading `~/` stays unquoted so the shell expands it.

  Args:
    arg: one argument or path.

  Returns:
    The argument as the shell should read it.
  """
  if arg.startswith("~/"):
    return "~/" + shlex.quote(arg[2:])
  return shlex.quote(arg)


def shell_line(argv: list[str]) -> str:
  """One shell line that runs `argv`; `--flag=value` is quoted as `--flag=VALUE`.

  Args:
    argv: the command.

  Returns:
    The line; `shlex.split(line) == argv`.
  """
  words = []
  for arg in argv:
    match = _FLAG_VALUE.match(arg)
    words.append(match[1] + shlex.quote(match[2]) if match else shlex.quote(arg))
  return " ".join(words)


def batch_note(devices: int, overrides: list[str]) -> str:
  """The global-batch rule as a plan line, after checking overridden batch sizes.

  The config file is not loaded here (ml_collections and the config modules are
  heavy to import on a laptop); main checks the configured values on start.

  Args:
    devices: the total number of JAX devices.
    overrides: the `--config.KEY=VALUE` arguments.

  Returns:
    The line to print.
  """
  for arg in overrides:
    key, value = arg[len("--config."):].split("=", 1)
    if key in _BATCH_KEYS and value.isdigit() and int(value) % devices:
      die(f"config.{key}={value} is not divisible by the {devices} devices: the "
          "batch is global and split evenly over them")
  return (f"global batch: config.batch_size (and config.ssl.batch_size when SSL "
          f"runs) must be divisible by {devices} devices")


def count(n: int, noun: str) -> str:
  """`n noun`, plural unless n is 1 (process -> processes, device -> devices)."""
  if n == 1:
    return f"1 {noun}"
  return f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def run(commands: list[list[str]], dry_run: bool) -> int:
  """Prints each command; unless `dry_run`, runs them in turn from the repo root.

  Args:
    commands: argv lists.
    dry_run: print only.

  Returns:
    0, or the exit status of the first command that failed.
  """
  for argv in commands:
    print(shell_line(argv), flush=True)
    if dry_run:
      continue
    try:
      status = subprocess.run(argv, cwd=ROOT, check=False).returncode
    except FileNotFoundError:
      die(f"{argv[0]!r} was not found on PATH: install it, or pass --dry_run to "
          "print the commands")
    if status:
      return status
  return 0

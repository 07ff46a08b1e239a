"""Run one experiment on several GPUs, on one or more nodes, under SLURM.

  python experiments/slurm.py --nodes=2 --gpus_per_node=8 [--partition=P] \
      [--time=HH:MM:SS] [--one_process_per=node|gpu] \
      --config=configs/imagenet1k.py:attack=badnets,variant=ss_f \
      --workdir=/shared/runs/imagenet1k/badnets/ss_f [--dry_run] [--config.KEY=VALUE ...]

Writes WORKDIR/launch/slurm.sbatch and submits it with sbatch (--dry_run prints
the script and the sbatch command instead). The job runs `srun python -m
vibe_jax.main ... --distributed=on`, one process per node seeing all its GPUs (the
default) or one per GPU; JAX reads the coordinator, the process count and each
process's index from SLURM's environment. The workdir must be on a filesystem
every node mounts. The job inherits the submitting shell's environment (sbatch's
default), so run this with the project's environment active.
"""

import argparse
import os
import pathlib
import re
import sys

import launch

# What sbatch accepts for --time: minutes, [D-]H:M:S and the forms in between.
_TIME = re.compile(r"^(\d+-)?\d+(:\d\d){0,2}$")
# #SBATCH lines are not read by a shell, so their values cannot be quoted.
_NAME = re.compile(r"^[\w.,-]+$")
CPUS_PER_GPU = 4

# The script's comments, which say why each line is there.
_SHARED_FS = """\
# The repo (cd below) and the workdir must be on a filesystem every node mounts
# (NFS, Lustre, GPFS): every process reads the checkpoints in the workdir, and
# process 0 writes the results there."""
_SRUN_CPUS = ("# srun (Slurm >= 22.05) no longer inherits --cpus-per-task from sbatch.\n"
              'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"')
_ALL_GPUS = """\
# One process per node uses all its GPUs: without this, JAX's SLURM detection
# keeps only GPU number SLURM_LOCALID (0) in each process."""
_ONE_GPU = """\
# One process per GPU: JAX's SLURM detection gives each process the GPU numbered
# SLURM_LOCALID, so srun must not bind GPUs to tasks (no --gpus-per-task)."""


def _positive(text: str) -> int:
  """argparse type: an integer >= 1 (argparse's error names the flag)."""
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
  return int(text)


def tasks_per_node(args) -> int:
  """Processes on each node: 1, or one per GPU."""
  return 1 if args.one_process_per == "node" else args.gpus_per_node


def topology(args) -> list[str]:
  """The plan's comment lines: processes, devices per process, total devices."""
  processes = args.nodes * tasks_per_node(args)
  per = args.gpus_per_node // tasks_per_node(args)
  devices = args.nodes * args.gpus_per_node
  count = launch.count
  return [f"# SLURM: {count(args.nodes, 'node')} x {count(args.gpus_per_node, 'GPU')}, "
          f"one process per {args.one_process_per}",
          f"# topology: {count(processes, 'process')} x {count(per, 'device')} = "
          f"{count(devices, 'JAX device')}"]


def script(args, overrides: list[str]) -> str:
  """The sbatch script: the #SBATCH header and the srun line.

  Args:
    args: the parsed flags (workdir absolute).
    overrides: `--config.KEY=VALUE` arguments for main.

  Returns:
    The script's text.
  """
  cpus = args.cpus_per_task or CPUS_PER_GPU * (args.gpus_per_node // tasks_per_node(args))
  lines = ["#!/bin/bash", "# Written by experiments/slurm.py.",
           f"#SBATCH --job-name={args.job_name}",
           f"#SBATCH --nodes={args.nodes}",
           f"#SBATCH --ntasks-per-node={tasks_per_node(args)}",
           f"#SBATCH --gpus-per-node={args.gpus_per_node}",
           f"#SBATCH --cpus-per-task={cpus}"]
  lines += [f"#SBATCH --partition={args.partition}"] if args.partition else []
  lines += [f"#SBATCH --time={args.time}"] if args.time else []
  lines += ["", "set -euo pipefail", *_SHARED_FS.splitlines(),
            f"cd {launch.quote(str(launch.ROOT))}", *_SRUN_CPUS.splitlines()]
  if args.one_process_per == "node":
    ids = ",".join(str(i) for i in range(args.gpus_per_node))
    lines += [*_ALL_GPUS.splitlines(), f"export JAX_LOCAL_DEVICE_IDS={ids}"]
  else:
    lines += _ONE_GPU.splitlines()
  command = launch.main_argv(args.python, args.config, args.workdir, overrides)
  # One failed process would leave the others waiting in a collective until the
  # distributed timeout: end the whole step instead.
  lines.append(launch.shell_line(["srun", "--kill-on-bad-exit=1", *command]))
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  """Parses the flags, prints the plan, writes and submits (or prints) the job.

  Args:
    argv: the arguments (default: sys.argv[1:]).

  Returns:
    The exit status: 0, or sbatch's when it failed.
  """
  parser = launch.Parser(__doc__, python="python")
  parser.add_argument("--nodes", type=_positive, default=1)
  parser.add_argument("--gpus_per_node", type=_positive, default=8)
  parser.add_argument("--one_process_per", choices=("node", "gpu"), default="node")
  parser.add_argument("--cpus_per_task", type=_positive, default=None,
                      help=f"default: {CPUS_PER_GPU} per GPU of the process")
  parser.add_argument("--partition", default="")
  parser.add_argument("--time", default="", help="the job's limit, e.g. 24:00:00")
  parser.add_argument("--job_name", default="vibe_jax")
  args, overrides = launch.parse(parser, argv)
  if args.time and not _TIME.match(args.time):
    launch.die(f"--time={args.time} is not a SLURM time: use HH:MM:SS or D-HH:MM:SS")
  for flag in ("job_name", "partition"):
    if getattr(args, flag) and not _NAME.match(getattr(args, flag)):
      launch.die(f"--{flag}={getattr(args, flag)} may hold only letters, digits and "
                 "._,- (#SBATCH lines are not read by a shell)")
  if args.workdir.startswith("gs://"):
    launch.die(f"--workdir={args.workdir}: SLURM nodes need a path on a shared "
               "filesystem they all mount, not gs://")
  args.workdir = os.path.abspath(os.path.expanduser(args.workdir))
  path = pathlib.Path(args.workdir) / "launch" / "slurm.sbatch"
  note = launch.batch_note(args.nodes * args.gpus_per_node, overrides)
  print("\n".join([*topology(args), f"# {note}"]))
  text = script(args, overrides)
  if args.dry_run:
    print(f"# ---- {path} (not written: dry run) ----\n{text}# ---- end ----")
  else:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"# wrote {path}")
  log = path.parent / "%x-%j.out"
  return launch.run([["sbatch", f"--output={log}", str(path)]], args.dry_run)


if __name__ == "__main__":
  sys.exit(main())

"""Run one experiment on a Cloud TPU pod slice: the same command on every worker.

  python experiments/tpu_pod.py --tpu=NAME --zone=ZONE --accelerator=v4-32 \
      --config=configs/imagenet1k.py:attack=badnets,variant=ss_f \
      --workdir=/gcs/BUCKET/imagenet1k/badnets/ss_f [--setup] [--dry_run] \
      [--config.KEY=VALUE ...]

Prints the slice's topology and then runs (or with --dry_run only prints)
`gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd REPO && python3 -m
vibe_jax.main ... --distributed=on"`; JAX finds the coordinator, the process count
and each worker's index on its own. --setup first installs the repo (checked out at
--repo_dir on every worker, the same commit) with its `tpu` extra on every worker.
Supported slices: v4-N and v5p-N (N TensorCores, 2 per chip, 4 chips per worker;
JAX sees one device per chip). A multi-worker slice needs a workdir every worker
shares: an absolute path mounted on every worker (a bucket through gcsfuse, e.g.
/gcs/BUCKET, or Filestore). vibe_jax reads and writes the workdir through the
filesystem, so a gs:// URL is refused.
"""

import dataclasses
import re
import sys

import launch

# v4 and v5p: the number in the name counts TensorCores; two of them form one JAX
# device (megacore), four chips sit on each worker VM (Cloud TPU v4 and v5p docs).
_SUPPORTED = re.compile(r"^(v4|v5p)-(\d+)$")
CORES_PER_CHIP = 2
CHIPS_PER_WORKER = 4
SETUP = 'python3 -m pip install -e ".[tpu]"'


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice: its accelerator type, chips and worker VMs."""
  accelerator: str
  chips: int
  workers: int

  @property
  def devices(self) -> int:
    """JAX devices in the slice: one per chip."""
    return self.chips


def topology(accelerator: str) -> Slice:
  """The slice named by a `--accelerator-type` such as v4-32.

  Args:
    accelerator: v4-N or v5p-N, N TensorCores (a multiple of 8: whole workers).

  Returns:
    The slice; exits 2 for an accelerator type this launcher does not know.
  """
  match = _SUPPORTED.match(accelerator)
  if not match:
    # v5e (v5litepod-N) and v6e place a different number of chips on each VM
    # depending on the slice size: not supported until checked on one.
    launch.die(f"unsupported accelerator {accelerator!r}: use v4-N or v5p-N (N "
               "TensorCores), e.g. v4-32")
  cores = int(match[2])
  per_worker = CORES_PER_CHIP * CHIPS_PER_WORKER
  if cores == 0 or cores % per_worker:
    launch.die(f"accelerator {accelerator!r}: the number after the dash counts "
               f"TensorCores and must be a positive multiple of {per_worker} (one "
               "worker), e.g. v4-8, v4-32")
  chips = cores // CORES_PER_CHIP
  return Slice(accelerator, chips, chips // CHIPS_PER_WORKER)


def plan(tpu: Slice, workdir: str, repo_dir: str, overrides: list[str]) -> list[str]:
  """The plan's comment lines: topology, the batch rule, what every worker needs."""
  count = launch.count
  per = tpu.devices // tpu.workers
  return [f"# TPU {tpu.accelerator}: {tpu.chips} chips on {count(tpu.workers, 'worker')} "
          f"x {CHIPS_PER_WORKER} chips, one JAX device per chip",
          f"# topology: {count(tpu.workers, 'process')} (one per worker) x "
          f"{count(per, 'device')} = {count(tpu.devices, 'JAX device')}",
          f"# {launch.batch_note(tpu.devices, overrides)}",
          f"# every worker: the repo at {repo_dir} (same commit), workdir {workdir} "
          "(mounted on every worker)"]


def commands(args, overrides: list[str]) -> list[list[str]]:
  """The gcloud commands: the optional setup, then main on every worker."""
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}"]
  if args.project:
    ssh.append(f"--project={args.project}")
  ssh.append("--worker=all")
  cd = f"cd {launch.quote(args.repo_dir)} && "
  main_command = launch.main_argv(args.python, args.config, args.workdir, overrides)
  out = [[*ssh, f"--command={cd}{SETUP}"]] if args.setup else []
  return out + [[*ssh, f"--command={cd}{launch.shell_line(main_command)}"]]


def main(argv: list[str] | None = None) -> int:
  """Parses the flags, prints the plan and runs (or prints) the commands.

  Args:
    argv: the arguments (default: sys.argv[1:]).

  Returns:
    The exit status: 0, or that of the gcloud command that failed.
  """
  parser = launch.Parser(__doc__, python="python3")
  parser.add_argument("--tpu", required=True, help="the TPU VM (slice) name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--accelerator", required=True, help="v4-N or v5p-N, e.g. v4-32")
  parser.add_argument("--project", default="", help="default: gcloud's project")
  parser.add_argument("--repo_dir", default="~/vibe_jax",
                      help="the repo on every worker (default: %(default)s)")
  parser.add_argument("--setup", action="store_true",
                      help=f"first run `{SETUP}` on every worker")
  args, overrides = launch.parse(parser, argv)
  tpu = topology(args.accelerator)
  if "://" in args.workdir:
    launch.die(f"--workdir={args.workdir} is a URL: vibe_jax reads and writes the "
               "workdir through the filesystem; mount the bucket on every worker "
               "(gcsfuse, e.g. /gcs/BUCKET) and pass that path")
  if tpu.workers > 1 and not args.workdir.startswith("/"):
    launch.die(f"--workdir={args.workdir} is not an absolute path: the {tpu.workers} "
               f"workers of {tpu.accelerator} must share one workdir mounted at the "
               "same path on each (gcsfuse or Filestore)")
  print("\n".join(plan(tpu, args.workdir, args.repo_dir, overrides)), flush=True)
  return launch.run(commands(args, overrides), args.dry_run)


if __name__ == "__main__":
  sys.exit(main())

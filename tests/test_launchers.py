"""The TPU pod and SLURM launchers: their dry runs, quoting and bad input."""

import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The launchers are scripts in experiments/ (not a package) that import `launch`
# from beside them, as `python experiments/NAME.py` does.
sys.path.insert(0, str(ROOT / "experiments"))

import slurm  # noqa: E402
import tpu_pod  # noqa: E402

CONFIG = "configs/imagenet1k.py:attack=badnets,variant=ss_f"
TPU = ["--tpu=my-tpu", "--zone=us-central2-b", "--accelerator=v4-32", f"--config={CONFIG}",
       "--workdir=/gcs/my-bucket/run", "--dry_run"]
SSH = "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all"
MAIN = ("python3 -m vibe_jax.main --config=configs/imagenet1k.py:attack=badnets,variant=ss_f "
        "--workdir=/gcs/my-bucket/run --distributed=on")
BATCH = ("# global batch: config.batch_size (and config.ssl.batch_size when SSL runs) "
         "must be divisible by 16 devices")


def _slurm_args(workdir, *extra):
  return ["--nodes=2", "--gpus_per_node=8", "--partition=gpu", "--time=24:00:00",
          f"--config={CONFIG}", f"--workdir={workdir}", "--dry_run", *extra]


def test_tpu_v4_32_dry_run_prints_topology_setup_and_main(capsys):
  assert tpu_pod.main([*TPU, "--setup", "--project=proj"]) == 0
  ssh = SSH.replace("--worker=all", "--project=proj --worker=all")
  assert capsys.readouterr().out.splitlines() == [
      "# TPU v4-32: 16 chips on 4 workers x 4 chips, one JAX device per chip",
      "# topology: 4 processes (one per worker) x 4 devices = 16 JAX devices",
      BATCH,
      "# every worker: the repo at ~/vibe_jax (same commit), workdir /gcs/my-bucket/run "
      "(mounted on every worker)",
      f"{ssh} --command='cd ~/vibe_jax && python3 -m pip install -e \".[tpu]\"'",
      f"{ssh} --command='cd ~/vibe_jax && {MAIN}'"]


def test_tpu_overrides_are_forwarded_and_shell_quoted(capsys):
  assert tpu_pod.main([*TPU, "--", "--config.data.data_dir=/mnt/my data",
                       "--config.seed=3"]) == 0
  line = capsys.readouterr().out.splitlines()[-1]
  assert line == (f"{SSH} --command='cd ~/vibe_jax && {MAIN} --config.data.data_dir="
                  "'\"'\"'/mnt/my data'\"'\"' --config.seed=3'")
  # What the shell hands gcloud, and what the worker's shell hands Python.
  command = shlex.split(line)[-1].removeprefix("--command=")
  assert shlex.split(command) == ["cd", "~/vibe_jax", "&&", *MAIN.split(),
                                  "--config.data.data_dir=/mnt/my data", "--config.seed=3"]


def test_slurm_2x8_dry_run_prints_script_and_sbatch(tmp_path, capsys):
  assert slurm.main(_slurm_args(tmp_path / "run", "--config.seed=3")) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[:3] == ["# SLURM: 2 nodes x 8 GPUs, one process per node",
                       "# topology: 2 processes x 8 devices = 16 JAX devices", BATCH]
  script = tmp_path / "run" / "launch" / "slurm.sbatch"
  header = ["#!/bin/bash", "# Written by experiments/slurm.py.",
            "#SBATCH --job-name=vibe_jax", "#SBATCH --nodes=2",
            "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
            "#SBATCH --cpus-per-task=32", "#SBATCH --partition=gpu",
            "#SBATCH --time=24:00:00"]
  assert lines[3] == f"# ---- {script} (not written: dry run) ----"
  assert lines[4:4 + len(header)] == header
  assert "# (NFS, Lustre, GPFS): every process reads the checkpoints in the workdir, and" in lines
  assert f"cd {ROOT}" in lines
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in lines
  assert f"srun --kill-on-bad-exit=1 python -m vibe_jax.main --config={CONFIG} " \
         f"--workdir={tmp_path / 'run'} --distributed=on --config.seed=3" in lines
  assert lines[-1] == f"sbatch --output={script.parent}/%x-%j.out {script}"
  assert not script.parent.exists()  # a dry run writes nothing


def test_slurm_one_process_per_gpu(tmp_path, capsys):
  assert slurm.main(_slurm_args(tmp_path, "--one_process_per=gpu")) == 0
  lines = capsys.readouterr().out.splitlines()
  assert "# topology: 16 processes x 1 device = 16 JAX devices" in lines
  assert "#SBATCH --ntasks-per-node=8" in lines and "#SBATCH --cpus-per-task=4" in lines
  assert not any("JAX_LOCAL_DEVICE_IDS" in line for line in lines)


def test_slurm_writes_the_script_then_needs_sbatch(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
  with pytest.raises(SystemExit) as exit_:
    slurm.main([a for a in _slurm_args(tmp_path / "run") if a != "--dry_run"])
  assert exit_.value.code == 2
  script = (tmp_path / "run" / "launch" / "slurm.sbatch").read_text()
  assert script.startswith("#!/bin/bash\n") and "\nsrun " in script
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "'sbatch' was not found on PATH" in err


@pytest.mark.parametrize("launcher, argv, message", [
    (tpu_pod, [*TPU[:2], "--accelerator=v5litepod-16", *TPU[3:]],
     "unsupported accelerator 'v5litepod-16': use v4-N or v5p-N"),
    (tpu_pod, [*TPU[:2], "--accelerator=v4-12", *TPU[3:]], "positive multiple of 8"),
    (tpu_pod, TPU[1:], "the following arguments are required: --tpu"),
    (tpu_pod, [*TPU, "--config.seed", "3"], "'--config.seed' is not a config override"),
    (tpu_pod, [*TPU, "seed=3"], "'seed=3' is not a config override"),
    (tpu_pod, [*TPU[:4], "--workdir=run", "--dry_run"], "is not an absolute path"),
    (tpu_pod, [*TPU[:4], "--workdir=gs://b/run", "--dry_run"], "mount the bucket"),
    (tpu_pod, [*TPU, "--config.batch_size=24"],
     "config.batch_size=24 is not divisible by the 16 devices"),
    (slurm, _slurm_args("/tmp/run") + ["--nodes=0"], "argument --nodes: '0' is not a positive integer"),
    (slurm, _slurm_args("gs://b/run"), "shared filesystem"),
    (slurm, _slurm_args("/tmp/run") + ["--time=1 day"], "is not a SLURM time"),
    (slurm, ["--config=configs/nope.py", "--workdir=/tmp/run"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(launcher, argv, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    launcher.main(argv)
  assert exit_.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and err.count("\n") == 1 and "error: " in err and message in err


@pytest.mark.parametrize("script, argv, first", [
    ("tpu_pod.py", TPU, "# TPU v4-32: 16 chips on 4 workers x 4 chips"),
    ("slurm.py", _slurm_args("/tmp/vibe_jax_run"), "# SLURM: 2 nodes x 8 GPUs"),
])
def test_runs_as_a_script_from_the_repo_root(script, argv, first):
  for args, expect in ((argv, first), (["--help"], "usage: ")):
    out = subprocess.run([sys.executable, f"experiments/{script}", *args], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith(expect)

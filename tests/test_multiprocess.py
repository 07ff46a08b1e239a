"""Two processes on this machine (JAX's multi-controller runtime, CPU collectives,
two devices each) run the same command as one process, and end with the same
pseudo-labels and parameters; only process 0 writes files."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import ROOT, class_colour_folder, image_config, saved_state
from vibe_jax.experiment import train_and_evaluate

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _main(args, workdir):
  return [sys.executable, "-m", "vibe_jax.main", *args, f"--workdir={workdir}"]


def _two(args, tmp_path):
  """Runs `args` in 2 processes with 2 devices each; returns their (stdout, stderr)."""
  port = _free_port()
  procs = [subprocess.Popen(
      _main(args, tmp_path / "two") + [f"--coordinator_address=127.0.0.1:{port}",
                                       "--num_processes=2", f"--process_id={i}",
                                       "--distributed_timeout=120"],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def _assert_same_run(tmp_path, stage: str, step: int, atol: float = 1e-6):
  a = saved_state(tmp_path / "one", stage, step)
  b = saved_state(tmp_path / "two", stage, step, a)
  np.testing.assert_array_equal(a["extra"]["pseudo_labels"], b["extra"]["pseudo_labels"])
  for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol)
  np.testing.assert_array_equal(np.load(tmp_path / "one" / "pseudo_labels.npy"),
                                np.load(tmp_path / "two" / "pseudo_labels.npy"))


@pytest.mark.slow
def test_two_processes_stream_their_own_image_rows_as_one(tmp_path):
  """Each process reads, decodes and poisons only its rows of every batch and embeds
  only its rows in the E-step. Short on purpose: the cross-process all-reduce
  (Gloo) adds in another order than one process's, and after about six steps of this
  CNN a max-pool tie routes one gradient differently (measured with Flax's
  BatchNorm: 2e-7 at step 5, 8e-5 at step 6, identical with data.placement=device in
  two processes; with ours, whose sums are matrix products, 1.2e-6 at step 4, so
  parameters are compared to 1e-5 here)."""
  root = class_colour_folder(tmp_path / "data")
  config = tmp_path / "streamed.py"
  config.write_text(
      "import pathlib\nfrom tests.helpers import image_config\n\n"
      "def get_config():\n"
      f"  c = image_config(pathlib.Path({str(root)!r}), steps=4)\n"
      "  c.data.placement, c.estep.period, c.checkpoint.every = 'stream', 2, 2\n"
      "  return c\n")
  one = image_config(root, steps=4)
  one.data.placement, one.estep.period, one.checkpoint.every = "stream", 2, 2
  train_and_evaluate(one, tmp_path / "one")
  outs = _two([f"--config={config}"], tmp_path)
  _assert_same_run(tmp_path, "vibe", 4, atol=1e-5)
  # Process 0 prints the table and writes the files; process 1 writes nothing.
  assert "| VIBE-F |" in outs[0][0] and "| VIBE-F |" not in outs[1][0]
  assert "process 1 of 2" in outs[1][1]
  rows = lambda run: (tmp_path / run / "metrics.jsonl").read_text().splitlines()
  assert len(rows("two")) == len(rows("one"))

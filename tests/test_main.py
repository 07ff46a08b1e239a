"""The command line end to end: quickstart, resume after a kill, config errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _command(workdir, *overrides, config="configs/quickstart.py"):
  return [sys.executable, "-m", "vibe_jax.main", f"--config={config}",
          f"--workdir={workdir}", "--config.progress_bar=False", *overrides]


def _run(workdir, *overrides, config="configs/quickstart.py", check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(_command(workdir, *overrides, config=config), cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=600)
  if check and out.returncode != 0:
    raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
  return out


def test_quickstart_defends_and_writes_results(tmp_path):
  out = _run(tmp_path)
  assert "| no defense |" in out.stdout and "| VIBE-F |" in out.stdout
  results = json.loads((tmp_path / "results.json").read_text())
  baseline, vibe = results["rows"]
  assert baseline["asr"] > 0.5  # the attack works without a defense
  assert vibe["asr"] <= baseline["asr"] / 2
  assert abs(vibe["clean_acc"] - baseline["clean_acc"]) <= 0.03
  assert results["clean_acc"] == vibe["clean_acc"] and results["seed"] == 0
  assert results["config"]["model"]["variant"] == "F"
  assert {"commit", "device"} <= set(results["provenance"])
  assert "| VIBE-F |" in (tmp_path / "results.md").read_text()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  esteps = [l for l in lines if l["event"] == "estep" and l["stage"] == "vibe"]
  assert len(esteps) == 6  # steps 0, 250, ..., 1250
  assert esteps[-1]["poisoned_relabelled"] > 0.9


def _final_state(workdir):
  from vibe_jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = workdir / "vibe" / "checkpoints"
  step = Checkpointer(directory).latest_step()
  restored = ocp.StandardCheckpointer().restore(directory / str(step) / "default")
  return step, restored


RESUME_ARGS = ("--config.defenses=vibe", "--config.num_steps=6000",
               "--config.checkpoint.every=200", "--config.estep.period=500",
               "--config.model.variant=A")


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  _run(whole, *RESUME_ARGS)

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(_command(killed, *RESUME_ARGS), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = killed / "vibe" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckpt_dir.is_dir() and any(p.name.isdigit() and int(p.name) >= 1000
                                 for p in ckpt_dir.iterdir()):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
  assert steps and max(steps) < 6000, "the run finished before it could be killed"
  assert not (killed / "results.json").exists()

  out = _run(killed, *RESUME_ARGS, "--verbosity=0")
  assert "resuming from the checkpoint at step" in out.stderr

  step_a, a = _final_state(whole)
  step_b, b = _final_state(killed)
  assert step_a == step_b == 6000
  np.testing.assert_array_equal(a["extra"]["pseudo_labels"], b["extra"]["pseudo_labels"])
  for name in ("mu", "eta", "rho"):
    np.testing.assert_array_equal(a["params"]["head"][name], b["params"]["head"][name])
  np.testing.assert_array_equal(np.load(whole / "pseudo_labels.npy"),
                                np.load(killed / "pseudo_labels.npy"))
  ra = json.loads((whole / "results.json").read_text())
  rb = json.loads((killed / "results.json").read_text())
  assert ra["rows"][0]["clean_acc"] == rb["rows"][0]["clean_acc"]
  assert ra["rows"][0]["asr"] == rb["rows"][0]["asr"]


@pytest.mark.parametrize("args,message", [
    (("--config.model.vairant=A",), "unknown config key 'vairant'"),
    (("--config.num_steps=many",), "--config.num_steps=many"),
    (("--config.data.source=npz", "--config.data.path=/no/such.npz"), "/no/such.npz"),
    (("--config.model.variant=B",), "config.model.variant 'B'"),
])
def test_bad_config_stops_with_a_message_naming_it(tmp_path, args, message):
  out = _run(tmp_path, *args, check=False)
  assert out.returncode != 0
  assert message in out.stderr
  assert "Traceback" not in out.stderr


def test_missing_config_file_is_named(tmp_path):
  out = _run(tmp_path, config="configs/no_such_config.py", check=False)
  assert out.returncode != 0
  assert "no_such_config.py" in out.stderr and "Traceback" not in out.stderr

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
  # Redirected (not a terminal): plain progress lines, no carriage returns.
  assert "\r" not in out.stderr and "[vibe] step 250/1500: loss" in out.stderr


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
  before_kill = json.loads((killed / "vibe" / "seconds.json").read_text())

  # Resuming with another config is refused, and touches nothing.
  # (The killed run's lock file is taken over, with a warning, and released.)
  files = {p: p.read_bytes() for p in killed.rglob("*") if p.is_file() and p.name != ".lock"}
  for changed in ("--config.seed=1", "--config.num_steps=1000", "--config.optim.lr.mu=0.5"):
    out = _run(killed, *RESUME_ARGS, changed, check=False)
    assert out.returncode == 2 and "holds another run" in out.stderr, out.stderr
    fatal = [l for l in out.stderr.strip().splitlines() if not l.startswith("W ")]
    assert len(fatal) == 1 and fatal[0].startswith("FATAL input error"), out.stderr
    assert {p: p.read_bytes() for p in files} == files
  (killed / "error.log").unlink()

  out = _run(killed, *RESUME_ARGS, "--verbosity=0")
  assert "resuming from the checkpoint at step" in out.stderr
  # Metric rows: one per (stage, event, step), as in the uninterrupted run.
  rows = lambda d: [(r["stage"], r["event"], r["step"]) for r in map(
      json.loads, (d / "metrics.jsonl").read_text().splitlines())]
  assert sorted(rows(killed)) == sorted(rows(whole)) and len(set(rows(killed))) == len(
      rows(killed))
  # The row's wall time adds the time before the kill to the time after it.
  vibe_row = json.loads((killed / "results.json").read_text())["rows"][-1]
  assert vibe_row["wall_time_s"] > max(before_kill.values())

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


@pytest.mark.slow
def test_two_runs_on_one_workdir_one_is_refused(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = ("--config.defenses=vibe", "--config.num_steps=3000")
  procs = [subprocess.Popen(_command(tmp_path, *args), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 2], outs
  refused = outs[[p.returncode for p in procs].index(2)][1]
  assert "is in use by pid" in refused and len(refused.strip().splitlines()) == 1
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["stage"], r["event"], r["step"]) for r in rows]
  assert len(keys) == len(set(keys))

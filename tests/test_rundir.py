"""A workdir belongs to one run: fingerprints, --fresh, the lock."""

import json
import logging
import multiprocessing
import os
import signal
import time

import pytest

from tests.helpers import clusters, feature_config
from vibe_jax import rundir
from vibe_jax.errors import InputError
from vibe_jax.experiment import train_and_evaluate


def test_a_run_with_another_config_or_data_is_refused_and_fresh_moves_it_aside(tmp_path):
  config = feature_config()
  first = train_and_evaluate(config, tmp_path, data=clusters())
  before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
  changed = feature_config()
  changed.seed, changed.num_steps = 1, 40
  with pytest.raises(InputError, match=r"num_steps 60 -> 40, seed 0 -> 1.*--fresh"):
    train_and_evaluate(changed, tmp_path, data=clusters())
  with pytest.raises(InputError, match="the data differ"):
    train_and_evaluate(config, tmp_path, data=clusters(seed=3))
  assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
  # Presentation keys may change: the finished run is reported again, unchanged.
  again = feature_config()
  again.log_every, again.progress_bar, again.evaluators = 10, True, "clean_acc,asr,knn"
  rerun = train_and_evaluate(again, tmp_path, data=clusters())
  assert rerun["rows"][-1]["clean_acc"] == first["rows"][-1]["clean_acc"]
  assert rerun["rows"][-1]["wall_time_s"] >= first["rows"][-1]["wall_time_s"] - 1.0
  # --fresh: the old run's files are moved aside (kept), the new run starts.
  train_and_evaluate(changed, tmp_path, data=clusters(), fresh=True)
  previous = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
  assert len(previous) == 1 and (previous[0] / "results.json").exists()
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1


def test_fingerprint_ignores_presentation_keys():
  a = rundir.config_fingerprint({"seed": 0, "progress_bar": True, "checkpoint": {
      "every": 5, "max_to_keep": 3}, "estep": {"period": 10}})
  assert a == {"seed": 0, "estep.period": 10}


def _hold(workdir, ready):
  with rundir.WorkdirLock(workdir):
    ready.set()
    time.sleep(60)


def test_a_busy_workdir_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, caplog):
  ctx = multiprocessing.get_context("spawn")  # no fork of a process running JAX threads
  ready = ctx.Event()
  holder = ctx.Process(target=_hold, args=(tmp_path, ready))
  holder.start()
  try:
    assert ready.wait(30)
    with pytest.raises(InputError, match=f"in use by pid {holder.pid}"):
      with rundir.WorkdirLock(tmp_path):
        pass
  finally:
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
  assert (tmp_path / ".lock").exists()  # left behind by the killed process
  with caplog.at_level(logging.WARNING), rundir.WorkdirLock(tmp_path):
    pass
  assert f"pid {holder.pid}" in caplog.text and "gone" in caplog.text
  assert not (tmp_path / ".lock").exists()


def test_a_run_from_before_an_upgrade_resumes_when_new_keys_keep_their_defaults(tmp_path):
  config = feature_config()
  train_and_evaluate(config, tmp_path, data=clusters())
  # As if the run had been started by a version without config.model.input_norm.
  path = tmp_path / "run.json"
  record = json.loads(path.read_text())
  del record["fingerprint"]["model.input_norm"]
  path.write_text(json.dumps(record))
  train_and_evaluate(config, tmp_path, data=clusters())  # the default: accepted
  config.model.input_norm = "imagenet"
  with pytest.raises(InputError, match=r'model.input_norm \(absent\) -> "imagenet"'):
    train_and_evaluate(config, tmp_path, data=clusters())

"""The EM loop in process, on an in-memory feature matrix."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import vibe_a_features
from vibe_jax import em
from vibe_jax.data import FeatureData
from vibe_jax.errors import InputError
from vibe_jax.models import class_means


def _clusters(seed=0, n_per_class=60, k=4, d=12, rate=0.15):
  """Gaussian clusters; poisoned examples get a large 'trigger' feature and label 0."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d)) * 3.0
  centres[:, -1] = 0.0

  def sample(labels):
    return (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32)

  true = np.repeat(np.arange(k), n_per_class)
  x = sample(true)
  poisoned = np.zeros(len(true), bool)
  candidates = np.flatnonzero(true != 0)
  poisoned[rng.choice(candidates, int(rate * len(true)), replace=False)] = True
  x[poisoned, -1] = 6.0
  given = np.where(poisoned, 0, true)
  test_y = np.repeat(np.arange(k), 20)
  asr = sample(np.repeat(np.arange(1, k), 20))
  asr[:, -1] = 6.0
  return FeatureData(x, given, sample(test_y), test_y, true, poisoned, asr,
                     np.zeros(len(asr), np.int32))


def test_train_and_evaluate_in_memory(tmp_path):
  config = _small_config()
  config.baseline.enabled = True
  data = _clusters()
  results = em.train_and_evaluate(config, str(tmp_path), data=data)
  baseline, vibe = results["rows"]
  assert baseline["method"] == "no defense" and vibe["method"] == "VIBE-A"
  for row in results["rows"]:
    assert 0.0 <= row["clean_acc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0
  assert 0.0 <= vibe["pseudo_true_agreement"] <= 1.0
  assert "pseudo_poisoned_relabelled" in vibe
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  esteps = [l["step"] for l in lines if l["event"] == "estep"]
  assert esteps == [0, 20, 40]
  assert (tmp_path / "vibe" / "checkpoints" / "60").is_dir()
  assert (tmp_path / "baseline" / "checkpoints" / "60").is_dir()
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # VIBE-A freezes eta: it must still equal the class means of the given labels,
  # while mu has moved away from them.
  state = ocp.StandardCheckpointer().restore(
      tmp_path / "vibe" / "checkpoints" / "60" / "default")
  means = class_means(data.train_features, data.train_labels, 4)
  np.testing.assert_allclose(state["params"]["head"]["eta"], means, atol=1e-6)
  assert not np.allclose(state["params"]["head"]["mu"], means, atol=1e-3)


_TWO_DEVICE_SCRIPT = """
import sys
from tests.test_em import _small_config, _clusters
from vibe_jax import em
import jax
assert jax.device_count() == 2, jax.devices()
em.train_and_evaluate(_small_config(), sys.argv[1], data=_clusters())
"""


def test_a_failing_rerun_keeps_the_finished_checkpoints(tmp_path):
  first = em.train_and_evaluate(_small_config(), str(tmp_path), data=_clusters())
  directory = tmp_path / "vibe" / "checkpoints"
  before = sorted(p.name for p in directory.iterdir())
  bad = _clusters()._replace(test_features=np.zeros((5, 3), np.float32))
  with pytest.raises(InputError, match="test_features"):
    em.train_and_evaluate(_small_config(), str(tmp_path), data=bad)
  assert sorted(p.name for p in directory.iterdir()) == before
  # And a rerun of the finished run restores the last step and changes nothing.
  again = em.train_and_evaluate(_small_config(), str(tmp_path), data=_clusters())
  assert sorted(p.name for p in directory.iterdir()) == before
  for key in ("clean_acc", "asr", "pseudo_true_agreement"):
    assert again["rows"][-1][key] == first["rows"][-1][key]


def _small_config():
  config = vibe_a_features.get_config()
  config.num_steps, config.batch_size, config.estep.period = 60, 32, 20
  config.log_every, config.checkpoint.every, config.progress_bar = 20, 30, False
  config.baseline.enabled = False
  return config


def test_two_devices_data_parallel_matches_one_device(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  em.train_and_evaluate(_small_config(), str(one), data=_clusters())
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT, str(two)], check=True,
                 cwd=pathlib.Path(__file__).resolve().parents[1], env=env)
  path = lambda d: d / "vibe" / "checkpoints" / "60" / "default"
  a = ocp.StandardCheckpointer().restore(path(one))
  # Saved on two devices: restoring here needs a target on this one device.
  b = ocp.StandardCheckpointer().restore(path(two), a)
  np.testing.assert_array_equal(a["pseudo_labels"], b["pseudo_labels"])
  for name in ("mu", "eta", "rho"):
    np.testing.assert_allclose(a["params"]["head"][name], b["params"]["head"][name],
                               atol=1e-5)

"""Frozen-backbone features: extracted once, cached, recomputed for another backbone."""

import json

import numpy as np
import pytest

from tests.helpers import class_colour_folder, image_config, saved_state
from vibe_jax.data.load import load_data
from vibe_jax.experiment import train_and_evaluate
from vibe_jax.models import convert
from vibe_jax.stages import extract_features
from vibe_jax.stages import features as features_stage
from vibe_jax.train import Inference, Inputs, build_model, initial_variables, inputs_for


def test_frozen_backbone_features_are_extracted_once_and_cached(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root)
  config.model.frozen_features = True
  run = tmp_path / "run"
  first = train_and_evaluate(config, str(run))
  # The stage hands its features on as a result; the config that ran is untouched.
  assert first["config"]["model"]["backbone"] == "small_cnn"
  assert first["config"] == json.loads((run / "config.json").read_text())
  features = np.load(run / "features.npz")
  assert features["train_features"].shape == (64, 128)  # small_cnn features
  assert features["asr_features"].shape[0] == 3 * 8  # test images of classes 1-3
  stamp = (run / "features.npz").stat().st_mtime_ns
  second = train_and_evaluate(config, str(run))  # the same run again: reuses the cache
  assert (run / "features.npz").stat().st_mtime_ns == stamp
  assert first["rows"][-1]["method"] == second["rows"][-1]["method"] == "VIBE-F"
  assert not first["stages"]["features"]["cached"] and second["stages"]["features"]["cached"]
  state = saved_state(run, "vibe", 20)
  assert "backbone" not in state["params"]  # VIBE ran on the cached features
  # Another backbone: the cache is recomputed, not reused.
  config.model.backbone = "resnet18_cifar"
  loaded = load_data(config)  # extraction on its own, not a run: no workdir check
  result = extract_features(config, loaded.data, Inputs(loaded.info), run, loaded.clean,
                            loaded.poisoning)
  assert not result.cached and result.data.train_features.shape == (64, 512)
  assert np.load(run / "features.npz")["train_features"].shape == (64, 512)


def _extract(config, workdir):
  loaded = load_data(config)
  return extract_features(config, loaded.data, inputs_for(config.model, loaded.info),
                          workdir, loaded.clean, loaded.poisoning), loaded


def test_clean_features_are_shared_between_attacks_and_only_changes_are_embedded(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root)
  config.model.feature_cache = str(tmp_path / "cache")
  badnets, loaded = _extract(config, tmp_path / "badnets")
  assert badnets.images_embedded == 64 + 32 + 16 + 24  # clean splits, 16 poisoned, ASR set
  config.data.attack, config.data.attack_params = "blend", "rate=0.125"
  blend, loaded = _extract(config, tmp_path / "blend")
  changed = int(loaded.clean.changed.sum())
  assert changed == 8 and blend.images_embedded == changed + 24  # the clean cache is reused
  # The assembled features equal embedding every poisoned image directly.
  direct = extract_features(config, loaded.data, inputs_for(config.model, loaded.info),
                            tmp_path / "direct")
  for name in ("train_features", "test_features", "asr_features"):
    np.testing.assert_allclose(getattr(blend.data, name), getattr(direct.data, name),
                               atol=1e-5)
  # Every cache file records what made it; another input size or backbone is recomputed.
  cache = tmp_path / "cache"
  records = [json.loads(p.read_text()) for p in sorted(cache.glob("*.json"))]
  attacks = sorted(r["attack"] for r in records if "attack" in r and r.get("changed_sha256"))
  assert attacks == ["badnets", "blend"]
  assert all(r["backbone"] == "small_cnn" and r["input_size"] == 0 and r["init_seed"] == 0
             for r in records)
  config.model.input_size = 48
  resized, _ = _extract(config, tmp_path / "resized")
  assert resized.images_embedded == 64 + 32 + 8 + 24
  assert not np.allclose(resized.data.test_features, blend.data.test_features)


def test_weights_are_identified_by_their_hash(tmp_path):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root)
  config.model.feature_cache = str(tmp_path / "cache")
  loaded = load_data(config)
  model = build_model(config.model, 4, backbone="small_cnn")
  inputs = inputs_for(config.model, loaded.info)
  weights = tmp_path / "w.msgpack"
  for seed, expect in ((1, 64 + 32 + 16 + 24), (2, 64 + 32 + 16 + 24)):
    variables = initial_variables(model, inputs.eval(loaded.data.train_features[:1]), seed)
    convert.save_variables({"params": variables["params"]["backbone"],
                            "batch_stats": variables["batch_stats"]["backbone"]}, weights)
    config.model.backbone_weights = str(weights)  # same path, other contents
    result, _ = _extract(config, tmp_path / f"run{seed}")
    assert result.images_embedded == expect
    record = json.loads(next((tmp_path / f"run{seed}").glob("features.json")).read_text())
    assert record["weights_sha256"] == convert.file_sha256(weights)
  # The same weights at another path (moved, another checkout): the cache is reused.
  moved = tmp_path / "elsewhere" / "w.msgpack"
  moved.parent.mkdir()
  moved.write_bytes(weights.read_bytes())
  config.model.backbone_weights = str(moved)
  result, _ = _extract(config, tmp_path / "moved")
  assert result.images_embedded == 0


def test_an_interrupted_extraction_resumes_at_its_block(tmp_path, monkeypatch):
  root = class_colour_folder(tmp_path / "data")
  config = image_config(root)
  config.eval_batch_size = 2
  monkeypatch.setattr(features_stage, "_BLOCK_MIN", 8)  # 16-image blocks: 4 of training
  calls, armed = [], [True]
  real = Inference.embed

  def failing(self, variables, rows):
    calls.append(len(rows))
    if len(calls) == 3 and armed and armed.pop():
      raise RuntimeError("killed")  # in the middle of the clean training images
    return real(self, variables, rows)

  monkeypatch.setattr(Inference, "embed", failing)
  with pytest.raises(RuntimeError, match="killed"):
    _extract(config, tmp_path / "run")
  assert len(list((tmp_path / "run" / "feature_cache").glob("clean-*.partial/train/*.npy"))) == 2
  calls.clear()
  result, _ = _extract(config, tmp_path / "run")
  assert sum(calls) == result.images_embedded == 64 - 32 + 32 + 16 + 24
  assert not list((tmp_path / "run" / "feature_cache").glob("*.partial"))

"""VIBE-SS and the baseline on tiny poisoned images: the backbone trains inside EM."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from configs.common import base_config
from vibe_jax import em, mstep
from vibe_jax.models import VIBEHead, VIBEModel
from vibe_jax.models.backbones import build_backbone


def _folder(root, per_class=16, classes=4):
  rng = np.random.default_rng(0)
  for split, n in (("train", per_class), ("test", per_class // 2)):
    for c in range(classes):
      (root / split / f"class{c}").mkdir(parents=True)
      for i in range(n):
        # Each class has its own mean colour, so that a CNN can learn something.
        base = np.full((32, 32, 3), 40 + 50 * c, np.int16)
        noise = rng.integers(-30, 30, (32, 32, 3))
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / split / f"class{c}" / f"{i:03d}.png")
  return root


def _config(root, steps=20):
  c = base_config()
  c.data.source, c.data.dataset, c.data.attack = "images", str(root), "badnets"
  c.data.attack_params = "rate=0.25"
  c.model.backbone, c.model.variant = "small_cnn", "F"
  c.optim.lr.backbone = 0.01
  c.num_steps, c.batch_size, c.estep.period = steps, 8, 10
  c.log_every, c.checkpoint.every, c.progress_bar = 10, 10, False
  c.baseline.enabled = False
  return c


def _final(workdir, step):
  return ocp.StandardCheckpointer().restore(
      workdir / "vibe" / "checkpoints" / str(step) / "default")


def test_vibe_ss_trains_the_backbone_on_poisoned_images(tmp_path):
  root = _folder(tmp_path / "data")
  config = _config(root)
  config.baseline.enabled, config.baseline.lr = True, 0.05
  results = em.train_and_evaluate(config, str(tmp_path / "run"))
  methods = [r["method"] for r in results["rows"]]
  assert methods == ["no defense", "VIBE-F"]
  poisoning = json.loads((tmp_path / "run" / "poisoning.json").read_text())
  assert poisoning["attack"] == "badnets" and poisoning["num_poisoned"] == int(0.25 * 64)
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if l["event"] == "estep"] == [0, 10]
  state = _final(tmp_path / "run", 20)
  assert "backbone" in state["params"] and state["batch_stats"]
  # The backbone and its BatchNorm statistics moved between steps 10 and 20.
  earlier = _final(tmp_path / "run", 10)
  kernel = lambda s: s["params"]["backbone"]["Conv_0"]["kernel"]
  assert np.all(np.isfinite(kernel(state)))
  assert not np.allclose(kernel(state), kernel(earlier))
  stats = lambda s: s["batch_stats"]["backbone"]["BatchNorm_0"]["mean"]
  assert not np.allclose(stats(state), stats(earlier))


def test_image_run_resumes_to_the_same_parameters(tmp_path):
  root = _folder(tmp_path / "data")
  em.train_and_evaluate(_config(root, steps=30), str(tmp_path / "whole"))
  em.train_and_evaluate(_config(root, steps=20), str(tmp_path / "split"))
  em.train_and_evaluate(_config(root, steps=30), str(tmp_path / "split"))  # resumes at 20
  a, b = _final(tmp_path / "whole", 30), _final(tmp_path / "split", 30)
  np.testing.assert_array_equal(a["pseudo_labels"], b["pseudo_labels"])
  for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
    np.testing.assert_array_equal(x, y)


def test_baseline_step_decreases_the_loss_on_a_tiny_batch():
  model = VIBEModel(VIBEHead(num_classes=3, dim=128), backbone=build_backbone("small_cnn"))
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 32, 32, 3))
  y = jnp.arange(12) % 3
  variables = model.init(jax.random.PRNGKey(1), x)
  tx = mstep.make_optimizer({g: 0.05 for g in mstep.GROUPS})
  state = mstep.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           opt_state=tx.init(variables["params"]), pseudo_labels=y)
  step = jax.jit(mstep.make_baseline_step(model, tx))
  losses = []
  for _ in range(15):
    state, metrics = step(state, {"x": x, "y": y, "index": jnp.arange(12)})
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.7 * losses[0]


def test_images_without_a_backbone_are_refused(tmp_path):
  root = _folder(tmp_path / "data", per_class=4)
  config = _config(root)
  config.model.backbone = ""
  with pytest.raises(Exception, match="backbone"):
    em.train_and_evaluate(config, str(tmp_path / "run"))


def test_simclr_pretraining_feeds_vibe_ss(tmp_path):
  root = _folder(tmp_path / "data")
  config = _config(root, steps=10)
  config.ssl.enabled, config.ssl.method = True, "simclr"
  config.ssl.num_steps, config.ssl.batch_size, config.ssl.warmup_steps = 12, 16, 2
  config.ssl.knn_every, config.ssl.proj_hidden, config.ssl.proj_dim = 6, 64, 32
  config.log_every = 6
  config.optim.frozen.backbone = True  # so that VIBE's backbone must be the SSL one
  results = em.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["rows"][-1]["ssl_wall_time_s"] > 0
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  ssl = [l for l in lines if l["stage"] == "ssl"]
  assert [l["step"] for l in ssl] == [6, 12] and all(0 <= l["knn_acc"] <= 1 for l in ssl)
  assert (tmp_path / "run" / "ssl" / "backbone.msgpack").stat().st_size > 1000
  # The exported backbone is the SSL model's, and VIBE started from it.
  saved = ocp.StandardCheckpointer().restore(
      tmp_path / "run" / "ssl" / "checkpoints" / "12" / "default")
  from vibe_jax.models.convert import load_variables  # pylint: disable=g-import-not-at-top
  exported = load_variables(str(tmp_path / "run" / "ssl" / "backbone.msgpack"))
  ssl_kernel = exported["params"]["Conv_0"]["kernel"]
  np.testing.assert_array_equal(ssl_kernel, saved["params"]["backbone"]["Conv_0"]["kernel"])
  vibe_kernel = _final(tmp_path / "run", 10)["params"]["backbone"]["Conv_0"]["kernel"]
  np.testing.assert_array_equal(vibe_kernel, ssl_kernel)


def test_nt_xent_prefers_matching_views():
  from vibe_jax.ssl import nt_xent  # pylint: disable=g-import-not-at-top

  z = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
  same = float(nt_xent(z, z + 0.01, 0.2))
  shuffled = float(nt_xent(z, jnp.roll(z, 1, axis=0), 0.2))
  assert same < shuffled


def test_frozen_backbone_features_are_extracted_once_and_cached(tmp_path):
  root = _folder(tmp_path / "data")
  config = _config(root)
  config.model.frozen_features = True
  run = tmp_path / "run"
  first = em.train_and_evaluate(config, str(run))
  features = np.load(run / "features.npz")
  assert features["train_features"].shape == (64, 128)  # small_cnn features
  assert features["asr_features"].shape[0] == 3 * 8  # test images of classes 1-3
  stamp = (run / "features.npz").stat().st_mtime_ns
  config.num_steps = 30
  second = em.train_and_evaluate(config, str(run))  # resumes; reuses the cache
  assert (run / "features.npz").stat().st_mtime_ns == stamp
  assert first["rows"][-1]["method"] == second["rows"][-1]["method"] == "VIBE-F"
  state = _final(run, 30)
  assert "backbone" not in state["params"]  # VIBE ran on the cached features
  # Another backbone: the cache is recomputed, not reused.
  from vibe_jax import extract  # pylint: disable=g-import-not-at-top
  from vibe_jax.data.load import load_data  # pylint: disable=g-import-not-at-top
  config.model.backbone = "resnet18_cifar"
  data, info = load_data(config)
  assert extract.cached_features(config, data, info, run).train_features.shape == (64, 512)
  assert np.load(run / "features.npz")["train_features"].shape == (64, 512)


def test_leiden_filtering_runs_before_vibe(tmp_path):
  root = _folder(tmp_path / "data")
  config = _config(root, steps=10)
  config.leiden.enabled, config.leiden.num_neighbors = True, 5
  results = em.train_and_evaluate(config, str(tmp_path / "run"))
  report = json.loads((tmp_path / "run" / "leiden.json").read_text())
  kept = len(report["kept_indices"])
  assert kept + report["removed_examples"] == 64
  assert results["rows"][-1]["leiden_removed"] == report["removed_examples"]
  state = _final(tmp_path / "run", 10)
  assert state["pseudo_labels"].shape == (kept,)


def test_simclr_step_decreases_its_loss_on_a_tiny_batch():
  from vibe_jax.data.sources import DATASETS  # pylint: disable=g-import-not-at-top
  from vibe_jax.ssl import SimCLR, SSLState, make_ssl_step  # pylint: disable=g-import-not-at-top

  model = SimCLR(build_backbone("small_cnn"), hidden=64, out=32)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3),
                                                         dtype=np.uint8))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  tx = __import__("optax").adam(1e-3)
  state = SSLState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                   tx.init(variables["params"]))
  step = jax.jit(make_ssl_step(model, tx, DATASETS["cifar10"], temperature=0.2))
  key = jax.random.PRNGKey(3)  # the same views every step: the loss must fall
  losses = []
  for _ in range(25):
    state, metrics = step(state, key, images)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0]


def test_ssl_stage_resumes_to_the_same_backbone(tmp_path):
  root = _folder(tmp_path / "data")

  def run(workdir, ssl_steps):
    config = _config(root, steps=2)
    config.ssl.enabled, config.ssl.num_steps, config.ssl.batch_size = True, ssl_steps, 16
    config.ssl.pred_hidden, config.ssl.queue_size = 32, 64  # All4One, the default
    config.ssl.warmup_steps, config.ssl.knn_every = 2, 0
    config.ssl.proj_hidden, config.ssl.proj_dim = 64, 32
    config.checkpoint.every, config.log_every = 3, 3
    em.train_and_evaluate(config, str(workdir))

  run(tmp_path / "whole", 6)
  # A copy that lost everything after SSL step 3, as a run killed there would.
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(tmp_path / "whole", tmp_path / "split")
  for gone in ("ssl/checkpoints/6", "ssl/backbone.msgpack", "vibe", "baseline"):
    path = tmp_path / "split" / gone
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  run(tmp_path / "split", 6)  # resumes the SSL stage at step 3
  from vibe_jax.models.convert import load_variables  # pylint: disable=g-import-not-at-top
  a = load_variables(str(tmp_path / "whole" / "ssl" / "backbone.msgpack"))
  b = load_variables(str(tmp_path / "split" / "ssl" / "backbone.msgpack"))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_all4one_pretraining_runs_and_learns(tmp_path):
  from vibe_jax import all4one  # pylint: disable=g-import-not-at-top
  from vibe_jax.data.sources import DATASETS  # pylint: disable=g-import-not-at-top

  config = _config(tmp_path, steps=1)
  c = config.ssl
  c.num_steps, c.batch_size, c.warmup_steps = 30, 16, 1
  c.proj_hidden, c.proj_dim, c.pred_hidden, c.queue_size = 64, 32, 64, 64
  model = all4one.All4One(build_backbone("small_cnn"), 64, 32, 64)
  init, step, backbone_of = all4one.make_all4one(config, model, DATASETS["cifar10"], 30)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3),
                                                         dtype=np.uint8))
  state = init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  step = jax.jit(step)
  key = jax.random.PRNGKey(1)
  losses, queues = [], [np.asarray(state.extra["queue"])]
  for _ in range(12):
    state, metrics = step(state, key, images)
    losses.append(float(metrics["loss"]))
    assert all(np.isfinite(float(v)) for v in metrics.values())
  queues.append(np.asarray(state.extra["queue"]))
  assert int(state.extra["queue_ptr"]) == (12 * 16) % 64  # FIFO of 64
  assert not np.allclose(queues[0], queues[1])
  np.testing.assert_allclose(np.linalg.norm(queues[1], axis=1), 1.0, rtol=1e-5)
  # The momentum encoder trails the online one.
  mom = state.extra["momentum"]["backbone"]["Conv_0"]["kernel"]
  online = state.params["encoder"]["backbone"]["Conv_0"]["kernel"]
  assert not np.allclose(mom, online)
  assert losses[-1] < losses[0]
  assert set(backbone_of(state)) == {"params", "batch_stats"}


def test_all4one_positional_encoding_is_the_permuted_1d_sinusoid():
  from vibe_jax.all4one import positional_encoding  # pylint: disable=g-import-not-at-top

  pe = positional_encoding(5, 256)
  assert pe.shape == (5, 256)
  p = np.arange(256)
  np.testing.assert_allclose(pe[0], np.sin(p), atol=1e-6)  # channel 0: sin(p * 1)
  np.testing.assert_allclose(pe[1], np.cos(p), atol=1e-6)
  np.testing.assert_allclose(pe[2], np.sin(p * 10000 ** (-2 / 6)), atol=1e-6)
  np.testing.assert_allclose(pe[4], np.sin(p * 10000 ** (-4 / 6)), atol=1e-6)

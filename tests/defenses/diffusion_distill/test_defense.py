"""The distillation defense: generators, resumable variations, the student's run.

The diffusers test builds a tiny randomly initialised image-variation pipeline here
(nothing is downloaded); it needs the `diffusion` extra, which CI installs."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import class_colour_folder, image_config
from vibe_jax.config import validate
from vibe_jax.data.load import load_data
from vibe_jax.defenses.diffusion_distill import generators
from vibe_jax.defenses.diffusion_distill.generators import (DiffusersGenerator, FolderGenerator,
                                                            IdentityGenerator)
from vibe_jax.defenses.diffusion_distill.variations import variations
from vibe_jax.errors import InputError, MissingFileError
from vibe_jax.experiment import train_and_evaluate

HAS_DIFFUSERS = all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers"))


def _tiny_pipeline(path):
  import torch
  from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImageVariationPipeline,
                         UNet2DConditionModel)
  from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
  torch.manual_seed(0)
  unet = UNet2DConditionModel(
      sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
      block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
      attention_head_dim=2, norm_num_groups=4)
  vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                      down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                      sample_size=32)
  encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
      hidden_size=16, projection_dim=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=32, image_size=32, patch_size=8))
  StableDiffusionImageVariationPipeline(
      vae=vae, image_encoder=encoder, unet=unet, scheduler=DDIMScheduler(),
      safety_checker=None, feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
      requires_safety_checker=False).save_pretrained(path)
  return path


def _config(tmp_path, generator, **distill):
  config = image_config(class_colour_folder(tmp_path / "data"), steps=10)
  config.defenses = "none,distill"
  config.distill.generator = generator
  for key, value in distill.items():
    config.distill[key] = value
  return config


@pytest.mark.skipif(not HAS_DIFFUSERS, reason='needs the diffusion extra: pip install -e ".[diffusion]"')
def test_diffusers_variations_resume_and_train_a_student(tmp_path, monkeypatch):
  pipe = _tiny_pipeline(tmp_path / "pipe")
  config = _config(tmp_path, "diffusers", model_path=str(pipe), steps=2, size=32,
                   generation_batch=16)
  calls, real = [], DiffusersGenerator.generate

  def counted(self, images, indices):
    calls.append(indices[0])
    if len(calls) == 3 and not any(c == "killed" for c in calls):
      calls.append("killed")
      raise RuntimeError("killed")  # in the middle of the 64 training images
    return real(self, images, indices)

  monkeypatch.setattr(DiffusersGenerator, "generate", counted)
  run = tmp_path / "run"
  with pytest.raises(RuntimeError, match="killed"):
    train_and_evaluate(config, str(run))
  assert len(list((run / "distill" / "variations.partial").glob("*.npy"))) == 2
  calls.clear()
  results = train_and_evaluate(config, str(run))
  assert calls == [32, 48]  # only the two unfinished batches of 16
  row = results["rows"][-1]
  assert row["method"] == "Distill (diffusers)" and 0.0 <= row["clean_acc"] <= 1.0
  assert row["distill_poisoned_changed"] == 1.0  # every image was regenerated
  record = json.loads((run / "distill" / "variations.json").read_text())
  assert record["generator"] == "diffusers" and record["steps"] == 2 and record["seed"] == 0
  images = np.load(run / "distill" / "variations.npy")
  assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
  # The teacher is the no-defense model: trained once, by the first run.
  trained = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert sum(r.get("stage") == "baseline" and r.get("step") == 10 for r in trained) == 1


def test_identity_oracle_and_folder_generators(tmp_path):
  config = _config(tmp_path, "identity")
  loaded = load_data(config)
  record = {"what": "test"}
  out, made = variations(IdentityGenerator(loaded.clean), loaded.data.train_features, record,
                         tmp_path / "identity", batch_size=24, progress=False)
  assert made == 64
  np.testing.assert_array_equal(out, loaded.clean.train[np.arange(64)])
  poisoned = loaded.data.train_poisoned
  assert np.all(np.any(out[poisoned] != loaded.data.train_features[poisoned], axis=(1, 2, 3)))
  again, made = variations(IdentityGenerator(loaded.clean), loaded.data.train_features, record,
                           tmp_path / "identity", batch_size=24, progress=False)
  assert made == 0 and np.array_equal(again, out)  # cached, same record
  folder = tmp_path / "folder"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(folder / f"{i:06d}.png")
  generator = FolderGenerator(folder, color_transfer=False)
  got = generator.generate(loaded.data.train_features[:3], np.arange(3))
  assert got.shape == (3, 32, 32, 3) and [int(g.mean()) for g in got] == [0, 40, 80]
  with pytest.raises(MissingFileError, match="training image 3"):
    generator.generate(loaded.data.train_features[3:4], np.array([3]))


def test_the_diffusers_generator_without_the_extra_names_the_install(tmp_path, monkeypatch):
  config = _config(tmp_path, "diffusers", model_path=str(tmp_path))
  real = importlib.util.find_spec
  monkeypatch.setattr(generators.importlib.util, "find_spec",
                      lambda name, *a: None if name == "diffusers" else real(name, *a))
  with pytest.raises(InputError, match=r'needs diffusers: pip install -e "\.\[diffusion\]"'):
    validate(config)
  config.distill.generator, config.distill.folder = "folder", str(tmp_path / "absent")
  with pytest.raises(InputError, match="distill.folder"):
    validate(config)

"""ABL and CBD on streamed images with the small CNN, resumed stage by stage: a run
whose last checkpoints are lost ends with the rows of the uninterrupted run."""

import shutil

from tests.helpers import class_colour_folder, image_config
from vibe_jax.experiment import train_and_evaluate


def test_abl_and_cbd_stream_images_and_resume_stage_by_stage(tmp_path):
  root = class_colour_folder(tmp_path / "data", per_class=8)
  config = image_config(root, steps=8)
  config.defenses, config.data.placement = "abl,cbd", "stream"
  config.checkpoint.every, config.log_every = 4, 4
  config.abl.isolation_ratio, config.cbd.confounder_epochs = 0.25, 1.0
  first = train_and_evaluate(config, tmp_path / "run")
  assert first["stages"]["data"]["placement"] == "stream"
  assert [r["method"] for r in first["rows"]] == ["ABL", "CBD"]
  # Lose the newest checkpoints of the last phases (as a preemption would).
  shutil.rmtree(tmp_path / "run" / "cbd" / "checkpoints" / "8")
  unlearn = first["stages"]["abl"]["steps"]["abl_unlearn"]
  shutil.rmtree(tmp_path / "run" / "abl_unlearn" / "checkpoints" / str(unlearn))
  again = train_and_evaluate(config, tmp_path / "run")
  for a, b in zip(first["rows"], again["rows"]):
    assert (a["clean_acc"], a["asr"]) == (b["clean_acc"], b["asr"])

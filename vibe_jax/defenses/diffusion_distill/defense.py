"""Training on diffusion-based image variations with knowledge distillation
(Struppek et al., arXiv 2310.06372), as its public code
(`LukasStruppek/Robust_Training_on_Poisoned_Samples`) does it.

Three steps, each resuming on its own:

1. Teacher: the no-defense model of the run (stage `baseline`, shared with the
   `none` row: trained once, restored when the other has finished it).
2. Variations (`workdir/distill/`): one variation of every training image, as
   given (triggered or not), by the generator `distill.generator` names
   (`generators.py`: a diffusers pipeline from a local folder, a folder made
   elsewhere, or the `identity` oracle); small triggers are meant not to survive
   the regeneration.
3. Student (stage `distill_student`): a fresh classifier (its own initialisation)
   trained only on the variations, with the training labels as given, on
   alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE (`loss.py`),
   the teacher scoring the same variation images. Same optimizer, steps and batch
   as the no-defense row.

Defaults as the reference (`configs/defaults/*.yaml`): Versatile Diffusion, 50
steps, guidance 7.5, 512 px, colour transfer on, alpha 0.5, T 10, CE on the
temperature-scaled log-probabilities (`distill.scaled_ce`, see `loss.py`). The
reference's teacher and student are its own ResNets trained with Adam; ours are the
classifier every defense shares, trained with the no-defense recipe.
"""

import dataclasses
import json
import time

import ml_collections
import numpy as np

from vibe_jax import checks, files
from vibe_jax.defenses.base import (Defense, DefenseContext, DefenseOutcome, baseline_optimizer,
                                    build_classifier, initial_classifier, register,
                                    train_baseline, train_phase)
from vibe_jax.defenses.diffusion_distill.generators import (GENERATORS, build_generator,
                                                            check_generator)
from vibe_jax.defenses.diffusion_distill.loss import make_student_step
from vibe_jax.defenses.diffusion_distill.variations import variations
from vibe_jax.errors import InputError
from vibe_jax.train import classifier_state, stage_seconds, variables

__all__ = ["Distill"]

STAGE = "distill_student"


def _selected_generator(config: ml_collections.ConfigDict) -> list[str]:
  # Before any work: a run that selects this defense can build its generator.
  selected = "distill" in [n.strip() for n in str(config.get("defenses", "")).split(",")]
  if not selected or config.distill.generator not in GENERATORS:
    return []
  try:
    check_generator(config.distill)
  except InputError as error:
    return [str(error)]
  return []


@register("distill")
@dataclasses.dataclass(frozen=True)
class Distill(Defense):
  """Teacher (the no-defense model), variations, distilled student."""

  workdir_entries = ("baseline", "distill", STAGE)

  @staticmethod
  def add_defaults(config: ml_collections.ConfigDict) -> None:
    c = config.distill = ml_collections.ConfigDict()
    c.generator = "diffusers"  # "diffusers", "folder" or "identity" (an oracle)
    c.model_path = ""  # diffusers: a local model folder (from save_pretrained)
    c.folder = ""  # folder: <index>.png variations made elsewhere
    c.steps = 50
    c.guidance = 7.5
    c.size = 512  # the generator's side; variations are resized to the dataset's
    c.color_transfer = True
    c.generation_batch = 8
    c.alpha = 0.5
    c.temperature = 10.0
    c.scaled_ce = True  # the reference's CE on log_softmax(s / T); False: on s

  @staticmethod
  def check(config: ml_collections.ConfigDict) -> list[str]:
    c = "distill"
    return (checks.choice(config, f"{c}.generator", GENERATORS)
            + checks.text(config, f"{c}.model_path") + checks.text(config, f"{c}.folder")
            + checks.integer(config, f"{c}.steps", 1) + checks.number(config, f"{c}.guidance", 0.0)
            + checks.integer(config, f"{c}.size", 8) + checks.boolean(config, f"{c}.color_transfer")
            + checks.integer(config, f"{c}.generation_batch", 1)
            + checks.number(config, f"{c}.alpha", 0.0, 1.0)
            + checks.number(config, f"{c}.temperature", 0.0, low_open=True)
            + checks.boolean(config, f"{c}.scaled_ce") + _selected_generator(config))

  def run(self, ctx: DefenseContext) -> DefenseOutcome:
    """Teacher, then variations, then the student; each resumes."""
    config, data, c = ctx.config, ctx.data, ctx.config.distill
    if not data.is_images:
      raise InputError("the distill defense regenerates training images: it needs image "
                       "data, not frozen features (config.model.frozen_features)")
    generator = build_generator(c, config.seed, ctx.clean)
    model, teacher_state, teacher_seen = train_baseline(ctx)

    began = time.time()
    directory = ctx.workdir / "distill"
    record = {"dataset": config.data.dataset, "attack": config.data.attack,
              "attack_params": config.data.attack_params, "seed": config.seed,
              "train_subset": config.data.train_subset}
    images, made = variations(generator, data.train_features, record, directory,
                              c.generation_batch, config.progress_bar)
    timing = directory / "generation.json"
    if made or not timing.exists():
      files.write_json(timing, {"seconds": round(time.time() - began, 2), "images": made})
    generation = json.loads(timing.read_text())

    student_ctx = dataclasses.replace(ctx, data=data._replace(train_features=images))
    init_vars, features = initial_classifier(student_ctx, model, config.model.backbone_weights,
                                             seed=config.seed + 3)
    state = classifier_state(init_vars, features, data.train_labels, data.num_classes,
                             baseline_optimizer(config), config.seed + 3,
                             extra={"teacher": variables(teacher_state)})
    step = make_student_step(model, alpha=c.alpha, temperature=c.temperature,
                             scaled_ce=c.scaled_ce)
    state = train_phase(student_ctx, STAGE, state, step,
                        {"x": images, "y": data.train_labels}, config.num_steps)
    student_seen = config.num_steps * min(config.batch_size, len(data.train_labels))
    row = {"images_seen": teacher_seen + student_seen, "distill_generator": c.generator,
           "distill_variations_s": generation["seconds"]}
    changed = np.any(np.asarray(images) != np.asarray(data.train_features), axis=(1, 2, 3))
    if data.train_poisoned is not None and data.train_poisoned.any():
      row["distill_poisoned_changed"] = float(np.mean(changed[data.train_poisoned]))
    outputs = {"variations": str(directory / "variations.npy"), "generator": c.generator,
               "generation": generation, "steps": config.num_steps,
               "checkpoints": {s: str(ctx.workdir / s / "checkpoints")
                               for s in ("baseline", STAGE)}}
    seconds = (stage_seconds(ctx.workdir, "baseline") + stage_seconds(ctx.workdir, STAGE)
               + generation["seconds"])
    return DefenseOutcome(f"Distill ({c.generator})", model, variables(state), ctx.inputs,
                          row, outputs, seconds)

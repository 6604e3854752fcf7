"""The noisy-image classifier of ADM (Dhariwal & Nichol, 2021): guided-diffusion's EncoderUNetModel.

The down half and middle of the ADM U-Net (models/unet.py: the same residual and attention blocks and the same
layer names), a time embedding but no class embedding, then GroupNorm, SiLU and a pooling head that outputs
class logits for a noised image x_t at timestep t. Its gradient d log p(y | x_t) / d x_t guides sampling
(diffusion/classifier_guidance.py). Heads:

- `attention` (the released classifiers): CLIP-style attention pooling. The mean token joins the H*W pixel
  tokens, each gets a learned position embedding, and one attention layer (channels // num_head_channels heads)
  reads them with the mean token as the query; a dense layer maps its output to the logits.
- `adaptive`: the spatial mean through a zero-initialised dense layer.

Its spatial features before the head are sown as 'intermediates'/'features' (the tokens of the small REPA encoder,
docs/repa.md).

configs/adm_classifier.py builds the released 64, 128 and 256 pixel classifiers; models/adm_convert.py converts
their weights.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from models.layers import attention
from models.unet import block_factories, encoder, time_embedding

POOLS = ('attention', 'adaptive')


class AttentionPool(nn.Module):
  """[B, H, W, C] -> [B, num_outputs]: attention from the mean token to all H*W + 1 tokens (guided-diffusion's
  AttentionPool2d, from CLIP); only the mean token's output is computed, the only one the logits read."""
  num_heads: int
  num_outputs: int
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, h):
    b, hh, ww, c = h.shape
    tokens = h.reshape(b, hh * ww, c)
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
    position = self.param('positional_embedding', lambda key, shape: nn.initializers.normal(1.0)(key, shape) / c**0.5,
                          (hh * ww + 1, c))
    tokens = tokens + position.astype(tokens.dtype)
    split = lambda a: a.reshape(b, a.shape[1], self.num_heads, c // self.num_heads)
    q = split(nn.Dense(c, dtype=self.dtype, name='q')(tokens[:, :1]))
    k, v = (split(nn.Dense(c, dtype=self.dtype, name=n)(tokens)) for n in ('k', 'v'))
    pooled = attention(q, k, v, self.attention_impl).reshape(b, c)
    return nn.Dense(self.num_outputs, dtype=self.dtype, name='c_proj')(pooled)


class ADMClassifier(nn.Module):
  """Logits [B, num_classes] of p(y | x_t) for inputs x [B, H, W, C] at timesteps t [B]."""
  image_size: int
  channels: int
  num_classes: int
  base_channels: int = 128
  channel_mult: Sequence[float] = (1, 1, 2, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (32, 16, 8)
  dropout: float = 0.0
  num_heads: int = 1
  num_head_channels: int = 64  # > 0: channels // num_head_channels heads (guided-diffusion's classifiers: 64)
  num_groups: int = 32
  scale_shift_norm: bool = True
  resblock_updown: bool = True
  symmetric_downsample: bool = True
  pool: str = 'attention'  # one of POOLS
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None
  remat: bool = False
  remat_policy: str = 'full'

  @nn.compact
  def __call__(self, x, t, train=False):
    if self.pool not in POOLS:
      raise ValueError(f'config.model.pool={self.pool!r} is not one of {POOLS}')
    if self.num_classes < 2:
      raise ValueError(f'a classifier needs config.data.num_classes >= 2, got {self.num_classes}')
    emb = time_embedding(self, t)
    block, attn_block = block_factories(self)
    h, _ = encoder(self, x, emb, train, block, lambda name: attn_block(name))
    h = nn.silu(nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name='norm_out')(h))
    self.sow('intermediates', 'features', h)  # [B, H', W', C] before pooling: the digits REPA encoder's tokens
    if self.pool == 'attention':
      channels = h.shape[-1]
      heads = channels // self.num_head_channels if self.num_head_channels > 0 else self.num_heads
      if channels % heads:
        raise ValueError(f'the attention pool has {channels} channels, not divisible into {heads} heads')
      logits = AttentionPool(heads, self.num_classes, self.dtype, self.attention_impl, name='pool')(h)
    else:
      logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                        name='out')(h.mean(axis=(1, 2)))
    return logits.astype(jnp.float32)

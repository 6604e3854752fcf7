"""U-Net of DDPM (Ho et al., 2020) with the ADM options (Dhariwal & Nichol, 2021).

Residual blocks with GroupNorm and a projected time embedding, self-attention at chosen
resolutions, strided-conv downsampling and nearest-neighbour + conv upsampling, skip
connections concatenated on the way up. `scale_shift_norm` (ADM) conditions the second
normalisation by scale and shift instead of adding the embedding. NHWC throughout.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from models.layers import LabelEmbedder, MultiHeadCrossAttention, attention, remat_block, timestep_embedding
from models.text_encoder import PooledTextEmbedder, TextEncoderSpec, encode_text


class ResBlock(nn.Module):
  out_channels: int
  dropout: float
  num_groups: int
  scale_shift_norm: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train):
    norm = lambda name: nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name=name)
    h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name='conv1')(nn.silu(norm('norm1')(x)))
    emb = nn.Dense(2 * self.out_channels if self.scale_shift_norm else self.out_channels, dtype=self.dtype,
                   name='emb_proj')(nn.silu(emb))[:, None, None]
    if self.scale_shift_norm:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = norm('norm2')(h) * (1 + scale) + shift
    else:
      h = norm('norm2')(h + emb)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype, name='conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = nn.Dense(self.out_channels, dtype=self.dtype, name='skip')(x)
    return x + h


class AttnBlock(nn.Module):
  num_heads: int
  num_groups: int
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, context=None, context_lengths=None):
    """Self-attention; with a context (text token states [B, S, D]), cross-attention to it after."""
    b, hh, ww, c = x.shape
    h = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name='norm')(x)
    h = h.reshape(b, hh * ww, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h).reshape(b, hh * ww, self.num_heads, c // self.num_heads)
               for n in ('q', 'k', 'v'))
    h = attention(q, k, v, self.attention_impl).reshape(b, hh * ww, c)
    h = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='proj_out')(h)
    x = x + h.reshape(b, hh, ww, c)
    if context is not None:
      h = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name='cross_norm')(x)
      h = MultiHeadCrossAttention(self.num_heads, self.dtype, self.attention_impl, name='cross_attn')(
          h.reshape(b, hh * ww, c), context, context_lengths)
      x = x + h.reshape(b, hh, ww, c)
    return x


class UNet(nn.Module):
  """`y == num_classes` is the null label; `num_classes=0` makes the model unconditional.

  With `text` (models/text_encoder.py) the model takes `tokens` [B, L]: its attention blocks
  cross-attend to the text token states and the pooled text state is added to the time embedding.
  """
  image_size: int
  channels: int
  num_classes: int
  base_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_heads: int = 1
  num_groups: int = 32
  scale_shift_norm: bool = False
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None
  remat: bool = False
  remat_policy: str = 'full'  # models/layers.REMAT_POLICIES
  learn_sigma: bool = False  # twice the channels out: the prediction, then variance values (learned_variance.py)
  text: TextEncoderSpec | None = None

  @nn.compact
  def __call__(self, x, t, y=None, tokens=None, train=False):
    ch = self.base_channels
    emb = timestep_embedding(t, ch).astype(self.dtype)
    emb = nn.Dense(4 * ch, dtype=self.dtype, name='temb_0')(emb)
    emb = nn.Dense(4 * ch, dtype=self.dtype, name='temb_1')(nn.silu(emb))
    if self.num_classes > 0:
      emb = emb + LabelEmbedder(self.num_classes, 4 * ch, dtype=self.dtype, name='label_emb')(y)
    context = context_lengths = None
    if self.text is not None:
      if tokens is None:
        raise ValueError('this U-Net is text-conditional: pass tokens=int32 [B, L]')
      context, pooled, context_lengths = encode_text(self.text, tokens, self.dtype)
      emb = emb + PooledTextEmbedder(4 * ch, self.dtype, name='text_pooled_emb')(pooled)

    res_block = remat_block(ResBlock, self.remat_policy, static_argnums=(3,)) if self.remat else ResBlock
    block = lambda out, name: res_block(out, self.dropout, self.num_groups, self.scale_shift_norm, self.dtype,
                                        name=name)
    attn_block = lambda name: AttnBlock(self.num_heads, self.num_groups, self.dtype, self.attention_impl, name=name)
    attn = lambda name: lambda h: attn_block(name)(h, context, context_lengths)

    h = nn.Conv(ch, (3, 3), dtype=self.dtype, name='conv_in')(x.astype(self.dtype))
    skips = [h]
    resolution = self.image_size
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = block(ch * mult, f'down_{level}_res_{i}')(h, emb, train)
        if resolution in self.attn_resolutions:
          h = attn(f'down_{level}_attn_{i}')(h)
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype, name=f'down_{level}_downsample')(h)
        resolution //= 2
        skips.append(h)

    h = block(h.shape[-1], 'mid_res_0')(h, emb, train)
    h = attn('mid_attn')(h)
    h = block(h.shape[-1], 'mid_res_1')(h, emb, train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = block(ch * mult, f'up_{level}_res_{i}')(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        if resolution in self.attn_resolutions:
          h = attn(f'up_{level}_attn_{i}')(h)
      if level != 0:
        b, hh, ww, c = h.shape
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.Conv(c, (3, 3), dtype=self.dtype, name=f'up_{level}_upsample')(h)
        resolution *= 2

    h = nn.silu(nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name='norm_out')(h))
    h = nn.Conv(2 * self.channels if self.learn_sigma else self.channels, (3, 3), kernel_init=nn.initializers.zeros,
                dtype=self.dtype, name='conv_out')(h)
    return h.astype(jnp.float32)

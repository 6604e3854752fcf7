"""U-Net of DDPM (Ho et al., 2020) with the options of ADM (Dhariwal & Nichol, 2021; openai/guided-diffusion).

Residual blocks (GroupNorm, SiLU, conv; a projected time embedding, plus the class embedding when
class-conditional), self-attention at chosen resolutions, skip connections concatenated on the way up.
NHWC throughout. The defaults are DDPM's network; the ADM options, each off by default:

- `scale_shift_norm`: the embedding scales and shifts the second normalisation (FiLM-like, AdaGN) instead of
  being added before it.
- `resblock_updown`: BigGAN-style resampling: the step between levels is a residual block whose input, after its
  first norm and SiLU, is average-pooled 2x2 (down) or repeated 2x nearest (up), as is the block's skip, before
  its first conv. Otherwise a stride-2 3x3 conv downsamples and nearest x2 + 3x3 conv upsamples.
- `symmetric_downsample`: that stride-2 conv pads one pixel on every side (ADM's PyTorch padding=1) instead of
  SAME (DDPM's TensorFlow: none before, one after), which reads the input one pixel shifted.
- `num_head_channels` > 0: each attention layer has channels // num_head_channels heads (ADM: 64), instead of
  `num_heads` everywhere.
- `low_res_size` > 0: a super-resolution model (ADM's SuperResModel): it also takes `low_res` [B, s, s, C], the
  image at s = low_res_size pixels, upsamples it bilinearly to image_size and reads it concatenated to x (2C
  input channels).

The released ADM ImageNet models are configs/adm_imagenet.py and configs/adm_upsampler.py; models/adm_convert.py
converts their weights.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import LabelEmbedder, MultiHeadCrossAttention, attention, remat_block, timestep_embedding
from models.text_encoder import PooledTextEmbedder, TextEncoderSpec, encode_text


def upsample_nearest(x):
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
  out_channels: int
  dropout: float
  num_groups: int
  scale_shift_norm: bool
  dtype: jnp.dtype = jnp.float32
  resample: str | None = None  # 'down' / 'up': a resblock_updown block (both paths resampled before conv1)

  @nn.compact
  def __call__(self, x, emb, train):
    norm = lambda name: nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name=name)
    h = nn.silu(norm('norm1')(x))
    if self.resample == 'down':
      h, x = (nn.avg_pool(a, (2, 2), strides=(2, 2)) for a in (h, x))
    elif self.resample == 'up':
      h, x = (upsample_nearest(a) for a in (h, x))
    h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name='conv1')(h)
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
  num_head_channels: int = -1  # > 0: channels // num_head_channels heads instead of num_heads

  @nn.compact
  def __call__(self, x, context=None, context_lengths=None):
    """Self-attention; with a context (text token states [B, S, D]), cross-attention to it after."""
    b, hh, ww, c = x.shape
    heads = self.num_heads
    if self.num_head_channels > 0:
      if c % self.num_head_channels:
        raise ValueError(f'an attention layer has {c} channels, not a multiple of config.model.num_head_channels='
                         f'{self.num_head_channels}')
      heads = c // self.num_head_channels
    h = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name='norm')(x)
    h = h.reshape(b, hh * ww, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h).reshape(b, hh * ww, heads, c // heads) for n in ('q', 'k', 'v'))
    h = attention(q, k, v, self.attention_impl).reshape(b, hh * ww, c)
    h = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='proj_out')(h)
    x = x + h.reshape(b, hh, ww, c)
    if context is not None:
      h = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name='cross_norm')(x)
      h = MultiHeadCrossAttention(heads, self.dtype, self.attention_impl, name='cross_attn')(h.reshape(b, hh * ww, c),
                                                                                             context, context_lengths)
      x = x + h.reshape(b, hh, ww, c)
    return x


def time_embedding(module, t):
  """The sinusoidal embedding of t through two dense layers (temb_0, temb_1): [B, 4 * base_channels]."""
  ch = module.base_channels
  emb = timestep_embedding(t, ch).astype(module.dtype)
  emb = nn.Dense(4 * ch, dtype=module.dtype, name='temb_0')(emb)
  return nn.Dense(4 * ch, dtype=module.dtype, name='temb_1')(nn.silu(emb))


def block_factories(module):
  """(block(out_channels, name, resample=None), attn_block(name)) building `module`'s residual and attention
  blocks, with its remat setting."""
  res_block = remat_block(ResBlock, module.remat_policy, static_argnums=(3,)) if module.remat else ResBlock
  block = lambda out, name, resample=None: res_block(out, module.dropout, module.num_groups, module.scale_shift_norm,
                                                     module.dtype, resample, name=name)
  attn_block = lambda name: AttnBlock(module.num_heads, module.num_groups, module.dtype, module.attention_impl, module.
                                      num_head_channels, name=name)
  return block, attn_block


def level_channels(module, mult):
  """The channels of a level: int(mult * base_channels), as guided-diffusion's UNetModel computes them (its 512x512
  models start at mult 0.5)."""
  return int(mult * module.base_channels)


def encoder(module, x, emb, train, block, attn):
  """conv_in, the down levels and the middle block of `module` (a U-Net or the ADM classifier, called from its
  compact __call__, so the layers are its own): (h, the skips the up path concatenates)."""
  h = nn.Conv(level_channels(module, module.channel_mult[0]), (3, 3), dtype=module.dtype,
              name='conv_in')(x.astype(module.dtype))
  skips = [h]
  resolution = module.image_size
  for level, mult in enumerate(module.channel_mult):
    for i in range(module.num_res_blocks):
      h = block(level_channels(module, mult), f'down_{level}_res_{i}')(h, emb, train)
      if resolution in module.attn_resolutions:
        h = attn(f'down_{level}_attn_{i}')(h)
      skips.append(h)
    if level != len(module.channel_mult) - 1:
      if module.resblock_updown:
        h = block(h.shape[-1], f'down_{level}_downsample', 'down')(h, emb, train)
      else:
        padding = ((1, 1), (1, 1)) if module.symmetric_downsample else 'SAME'
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding=padding, dtype=module.dtype,
                    name=f'down_{level}_downsample')(h)
      resolution //= 2
      skips.append(h)
  h = block(h.shape[-1], 'mid_res_0')(h, emb, train)
  h = attn('mid_attn')(h)
  h = block(h.shape[-1], 'mid_res_1')(h, emb, train)
  return h, skips


class UNet(nn.Module):
  """`y == num_classes` is the null label; `num_classes=0` makes the model unconditional.

  With `text` (models/text_encoder.py) the model takes `tokens` [B, L]: its attention blocks
  cross-attend to the text token states and the pooled text state is added to the time embedding.
  """
  image_size: int
  channels: int
  num_classes: int
  base_channels: int = 128
  channel_mult: Sequence[float] = (1, 2, 2, 2)  # level channels: int(mult * base_channels)
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
  num_head_channels: int = -1
  resblock_updown: bool = False
  symmetric_downsample: bool = False
  low_res_size: int = 0
  text: TextEncoderSpec | None = None

  @nn.compact
  def __call__(self, x, t, y=None, tokens=None, low_res=None, train=False):
    if self.low_res_size:
      if low_res is None or low_res.shape[1:] != (self.low_res_size, self.low_res_size, self.channels):
        raise ValueError(f'this U-Net is a super-resolution model: pass low_res=[B, {self.low_res_size}, '
                         f'{self.low_res_size}, {self.channels}] images, got '
                         f'{None if low_res is None else low_res.shape}')
      # bilinear with half-pixel centres, as torch's F.interpolate(mode='bilinear') in SuperResModel
      x = jnp.concatenate([x, jax.image.resize(low_res.astype(x.dtype), x.shape, 'linear')], axis=-1)
    emb = time_embedding(self, t)
    if self.num_classes > 0:
      emb = emb + LabelEmbedder(self.num_classes, 4 * self.base_channels, dtype=self.dtype, name='label_emb')(y)
    context = context_lengths = None
    if self.text is not None:
      if tokens is None:
        raise ValueError('this U-Net is text-conditional: pass tokens=int32 [B, L]')
      context, pooled, context_lengths = encode_text(self.text, tokens, self.dtype)
      emb = emb + PooledTextEmbedder(4 * self.base_channels, self.dtype, name='text_pooled_emb')(pooled)

    block, attn_block = block_factories(self)
    attn = lambda name: lambda h: attn_block(name)(h, context, context_lengths)
    h, skips = encoder(self, x, emb, train, block, attn)
    resolution = self.image_size // 2**(len(self.channel_mult) - 1)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(level_channels(self, mult), f'up_{level}_res_{i}')(h, emb, train)
        if resolution in self.attn_resolutions:
          h = attn(f'up_{level}_attn_{i}')(h)
      if level != 0:
        if self.resblock_updown:
          h = block(h.shape[-1], f'up_{level}_upsample', 'up')(h, emb, train)
        else:
          h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype, name=f'up_{level}_upsample')(upsample_nearest(h))
        resolution *= 2

    h = nn.silu(nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name='norm_out')(h))
    h = nn.Conv(2 * self.channels if self.learn_sigma else self.channels, (3, 3), kernel_init=nn.initializers.zeros,
                dtype=self.dtype, name='conv_out')(h)
    return h.astype(jnp.float32)

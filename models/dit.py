"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie, 2023).

Reads like the paper: patchify the (latent) image, add fixed 2-D sin-cos position embeddings,
run N transformer blocks conditioned by adaLN-Zero on the sum of the timestep and class
embeddings, then a final adaLN layer and a linear map back to patches.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from models.layers import (LabelEmbedder, MultiHeadCrossAttention, MultiHeadSelfAttention, SwiGLU, TimestepEmbedder,
                           gelu_tanh, layer_norm, remat_block, rope_2d)
from models.text_encoder import PooledTextEmbedder, TextEncoderSpec, encode_text

# Table 1 of the paper: depth, hidden size, heads.
DIT_VARIANTS = {
    'S': dict(depth=12, hidden_size=384, num_heads=6),
    'B': dict(depth=12, hidden_size=768, num_heads=12),
    'L': dict(depth=24, hidden_size=1024, num_heads=16),
    'XL': dict(depth=28, hidden_size=1152, num_heads=16),
}

# The block options (DiT fields mlp, norm, rope, qk_norm): DiT's are the first of each.
MLPS = ('gelu', 'swiglu')
NORMS = ('layer', 'rms')

# LightningDiT (Yao et al. 2025; hustvl/LightningDiT models/lightningdit.py, configs/lightningdit_xl_vavae_f16d32.yaml):
# DiT's sizes with SwiGLU, RMSNorm and 2-D RoPE, qk-norm off; the paper trains XL at patch 1 on VA-VAE f16d32 latents.
LIGHTNINGDIT_VARIANTS = {
    name: dict(DIT_VARIANTS[name], mlp='swiglu', norm='rms', rope=True, qk_norm=False) for name in ('B', 'L', 'XL')
}

# Table 4: forward Gflops, counted as multiply-adds, at 256x256 (a 32x32x4 latent), by patch size. The MFU of
# benchmarks/throughput.py uses them; tests/models/test_models.py checks this model's own count against them.
DIT_PAPER_GMACS = {
    'S': {2: 6.06, 4: 1.41, 8: 0.36},
    'B': {2: 23.01, 4: 5.56, 8: 1.42},
    'L': {2: 80.71, 4: 19.70, 8: 5.01},
    'XL': {2: 118.64, 4: 29.05, 8: 7.39},
}


def sincos_pos_embed_2d(dim, grid_size):
  """Fixed [grid*grid, dim] embedding: half the channels encode the column, half the row (MAE/DiT)."""
  def one_axis(d, pos):
    omega = 1.0 / 10_000**(np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum('m,d->md', pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  grid_w, grid_h = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
  emb = np.concatenate([one_axis(dim // 2, grid_w), one_axis(dim // 2, grid_h)], axis=1)
  return emb.astype(np.float32)


def patch_embed_init(key, shape, dtype=jnp.float32):
  """Xavier-uniform of the patch embedding as a [p * p * C, hidden] linear map, as DiT initialises its conv
  (`xavier_uniform_(w.view([w.shape[0], -1]))`): flax's conv fan-out would count the p x p window too, halving the
  bound for p = 2."""
  flat = (int(np.prod(shape[:-1])), shape[-1])
  return nn.initializers.xavier_uniform()(key, flat, dtype).reshape(shape)


def modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


def adaln_norm(norm, dtype, name):
  """The norm before an adaLN modulation: LayerNorm without parameters for 'layer' (DiT), RMSNorm with a learned
  scale and eps 1e-6 for 'rms' (LightningDiT)."""
  return layer_norm if norm == 'layer' else nn.RMSNorm(epsilon=1e-6, dtype=dtype, name=name)


class DiTBlock(nn.Module):
  """adaLN-Zero block; mlp, norm and qk_norm as the DiT fields of the same names."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None
  mlp: str = 'gelu'
  norm: str = 'layer'
  qk_norm: bool = False

  @nn.compact
  def __call__(self, x, c, context=None, context_lengths=None, rope=None):
    init = nn.initializers.xavier_uniform()  # the non-zero linears (DiT, PixArt-alpha)
    mod = nn.Dense(6 * self.hidden_size, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name='adaLN_modulation')(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = modulate(adaln_norm(self.norm, self.dtype, 'norm1')(x), shift_msa, scale_msa)
    attn = MultiHeadSelfAttention(self.num_heads, self.dtype, self.attention_impl,
                                  qk_norm=self.norm if self.qk_norm else None, name='attn')
    x = x + gate_msa[:, None] * attn(h, rope)
    if context is not None:  # text: cross-attention to the token states (PixArt-alpha), output projection zero-init
      h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm_cross')(x)
      x = x + MultiHeadCrossAttention(self.num_heads, self.dtype, self.attention_impl, init, name='cross_attn')(
          h, context, context_lengths)
    h = modulate(adaln_norm(self.norm, self.dtype, 'norm2')(x), shift_mlp, scale_mlp)
    width = int(self.hidden_size * self.mlp_ratio)
    if self.mlp == 'swiglu':  # int(2 / 3 * width) wide: LightningDiT's width, the GELU's parameter count
      h = SwiGLU(int(2 / 3 * width), self.dtype, init, name='mlp')(h)
    else:
      h = nn.Dense(width, kernel_init=init, dtype=self.dtype, name='mlp_fc1')(h)
      h = gelu_tanh(h)
      h = nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype, name='mlp_fc2')(h)
    return x + gate_mlp[:, None] * h


class FinalLayer(nn.Module):
  hidden_size: int
  patch_size: int
  out_channels: int
  dtype: jnp.dtype = jnp.float32
  norm: str = 'layer'

  @nn.compact
  def __call__(self, x, c):
    mod = nn.Dense(2 * self.hidden_size, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name='adaLN_modulation')(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    x = modulate(adaln_norm(self.norm, self.dtype, 'norm_final')(x), shift, scale)
    return nn.Dense(self.patch_size**2 * self.out_channels, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name='linear')(x)


class RepaProjector(nn.Module):
  """REPA's projector (`build_mlp` of Yu et al. 2025): Linear, SiLU, Linear, SiLU, Linear from the hidden states of
  each token to the width of a frozen encoder's tokens; xavier-uniform kernels, zero biases."""
  hidden_dim: int
  out_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform()
    x = nn.silu(nn.Dense(self.hidden_dim, kernel_init=init, dtype=self.dtype, name='fc1')(x))
    x = nn.silu(nn.Dense(self.hidden_dim, kernel_init=init, dtype=self.dtype, name='fc2')(x))
    return nn.Dense(self.out_dim, kernel_init=init, dtype=self.dtype, name='fc3')(x).astype(jnp.float32)


class DiT(nn.Module):
  """Class-conditional DiT on NHWC inputs; `y == num_classes` is the null label.

  `num_classes=0` makes it unconditional. The output has the input's channels, or twice as many with
  `learn_sigma` (the paper's models: prediction, then Improved DDPM's variance values).
  With `text` (models/text_encoder.py) it takes `tokens` [B, L]: every block cross-attends to the text
  token states after its self-attention, and the pooled text state is added to the adaLN input.

  LightningDiT's block options (docs/models.md; all off is DiT): `mlp='swiglu'` a SwiGLU feed-forward, `norm='rms'`
  RMSNorm with a learned scale for the adaLN norms (and the qk-norm), `rope` 2-D rotary embedding of q and k on the
  patch grid (the sin-cos position embedding stays), `qk_norm` a norm of q and k per head.

  With `repa_depth` > 0 (REPA, training/repa.py) the token states after block `repa_depth` (1-based) go through
  RepaProjector; the train step reads the result, [B, tokens, repa_out_dim], from the 'intermediates' collection
  ('repa'), and any other apply skips it: the output is the same either way.
  """
  image_size: int
  channels: int
  num_classes: int
  patch_size: int = 2
  depth: int = 12
  hidden_size: int = 768
  num_heads: int = 12
  mlp_ratio: float = 4.0
  mlp: str = 'gelu'  # MLPS: 'swiglu' = LightningDiT's SwiGLU feed-forward
  norm: str = 'layer'  # NORMS: 'rms' = RMSNorm with a learned scale
  rope: bool = False  # 2-D rotary position embedding in self-attention
  qk_norm: bool = False  # a `norm` of q and k per head
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None
  remat: bool = False
  remat_policy: str = 'full'  # models/layers.REMAT_POLICIES
  learn_sigma: bool = False  # twice the channels out: the prediction, then variance values (learned_variance.py)
  text: TextEncoderSpec | None = None
  repa_depth: int = 0  # REPA: the block whose output is projected (1-based); 0 = none
  repa_projector_dim: int = 2048
  repa_out_dim: int = 0  # the frozen encoder's token width

  @nn.compact
  def __call__(self, x, t, y=None, tokens=None, train=False):
    b, h, w, ch = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f'image side {h}x{w} is not divisible by patch size {p}')
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                kernel_init=patch_embed_init, name='x_embedder')(x.astype(self.dtype))
    gh, gw = x.shape[1], x.shape[2]
    x = x.reshape(b, gh * gw, self.hidden_size)
    x = x + jnp.asarray(sincos_pos_embed_2d(self.hidden_size, gh), self.dtype)[None]
    rope = tuple(map(jnp.asarray, rope_2d(self.hidden_size // self.num_heads, gh, gw))) if self.rope else None
    c = TimestepEmbedder(self.hidden_size, dtype=self.dtype, name='t_embedder')(t)
    if self.num_classes > 0:
      c = c + LabelEmbedder(self.num_classes, self.hidden_size, dtype=self.dtype, name='y_embedder')(y)
    context = context_lengths = None
    if self.text is not None:
      if tokens is None:
        raise ValueError('this DiT is text-conditional: pass tokens=int32 [B, L]')
      context, pooled, context_lengths = encode_text(self.text, tokens, self.dtype)
      c = c + PooledTextEmbedder(self.hidden_size, self.dtype, name='text_pooled_embedder')(pooled)
    block = remat_block(DiTBlock, self.remat_policy) if self.remat else DiTBlock
    for i in range(self.depth):
      x = block(self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, self.attention_impl, self.mlp, self.norm,
                self.qk_norm, name=f'blocks_{i}')(x, c, context, context_lengths, rope)
      if i + 1 == self.repa_depth and (self.is_initializing() or self.is_mutable_collection('intermediates')):
        projector = RepaProjector(self.repa_projector_dim, self.repa_out_dim, self.dtype, name='repa_projector')
        self.sow('intermediates', 'repa', projector(x))
    out_channels = 2 * self.channels if self.learn_sigma else self.channels
    x = FinalLayer(self.hidden_size, p, out_channels, self.dtype, self.norm, name='final_layer')(x, c)
    x = x.reshape(b, gh, gw, p, p, out_channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, out_channels).astype(jnp.float32)

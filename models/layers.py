"""Layers shared by the DiT and the U-Net: time embeddings, class embeddings and attention."""
import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def timestep_embedding(t, dim, max_period=10_000):
  """Sinusoidal embedding of (possibly fractional) timesteps t [B] -> [B, dim], cos first (DiT/ADM)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


_GELU_C = math.sqrt(2 / math.pi)


@jax.custom_vjp
def gelu_tanh(x):
  """GELU, tanh approximation (DiT's MLP), whose backward pass keeps only its input.

  Autodiff of jax.nn.gelu keeps the tanh and its neighbours for the backward pass (XLA counts tanh as
  expensive and stores its output rather than recomputing it); for DiT-XL/2 at batch 256 that is six
  [256 x 256 x 4608] tensors per block. Here the backward recomputes them from x, as PyTorch's GELU does.
  """
  return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_forward(x):
  return gelu_tanh(x), x


def _gelu_tanh_backward(x, grad):
  x32 = x.astype(jnp.float32)
  tanh = jnp.tanh(_GELU_C * (x32 + 0.044715 * x32**3))
  slope = 0.5 * (1 + tanh) + 0.5 * x32 * (1 - tanh * tanh) * _GELU_C * (1 + 3 * 0.044715 * x32**2)
  return ((grad.astype(jnp.float32) * slope).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_tanh_forward, _gelu_tanh_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def layer_norm(x, epsilon=1e-6):
  """LayerNorm over the last axis without scale or bias (DiT's adaLN norms), statistics in float32.

  Its backward pass keeps x and the per-token mean and 1/std; autodiff of flax's LayerNorm keeps two
  float32 copies of the whole activation ([256 x 256 x 1152] each for DiT-XL/2 at batch 256, per norm).
  """
  return _layer_norm_forward(x, epsilon)[0]


def _layer_norm_forward(x, epsilon):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + epsilon)
  return ((x32 - mean) * rstd).astype(x.dtype), (x, mean, rstd)


def _layer_norm_backward(epsilon, residuals, grad):
  del epsilon
  x, mean, rstd = residuals
  normed = (x.astype(jnp.float32) - mean) * rstd
  g = grad.astype(jnp.float32)
  dx = rstd * (g - g.mean(-1, keepdims=True) - normed * (g * normed).mean(-1, keepdims=True))
  return (dx.astype(x.dtype),)


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


def _save_dense_and_conv_outputs(primitive, *avals, **params):
  """Remat policy: keep the outputs of weight x activation products (dense layers: dot_generals without batch
  dimensions; convolutions), recompute everything else."""
  if primitive is jax.lax.conv_general_dilated_p:
    return True
  return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(primitive, *avals, **params)


# What a rematerialised block keeps for its backward pass (config.train.remat_policy); the rest is recomputed.
REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,  # the block's input only: least memory, a second forward
    # also the outputs of its dense layers and convolutions (q/k/v, projections, MLP), so only norms, modulation,
    # activations and attention are recomputed: most of the memory saving, little of the cost
    'dots': _save_dense_and_conv_outputs,
}


def remat_block(block_cls, policy, static_argnums=()):
  """block_cls rematerialised under REMAT_POLICIES[policy]."""
  return nn.remat(block_cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


class TimestepEmbedder(nn.Module):
  """Sinusoidal features followed by a two-layer SiLU MLP."""
  hidden_size: int
  frequency_size: int = 256
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    x = timestep_embedding(t, self.frequency_size).astype(self.dtype)
    init = nn.initializers.normal(0.02)
    x = nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype, name='mlp_0')(x)
    x = nn.silu(x)
    return nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype, name='mlp_2')(x)


class LabelEmbedder(nn.Module):
  """Class embedding table with one extra row, index num_classes, for the null (unconditional) label."""
  num_classes: int
  hidden_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, y):
    table = nn.Embed(self.num_classes + 1, self.hidden_size, embedding_init=nn.initializers.normal(0.02),
                     dtype=self.dtype, name='embedding_table')
    return table(y)


def attention(q, k, v, implementation=None, kv_lengths=None):
  """Multi-head attention on [B, L, H, D] tensors through jax.nn.dot_product_attention.

  implementation: None lets XLA choose; 'cudnn' asks for the cuDNN flash kernel (bf16/fp16, head dim a
  multiple of 8, at most 128, or 256 on Hopper) and falls back to XLA, with a warning naming the reason,
  where the backend, dtype or shape does not support it (on CPU, where that is expected, one INFO line).
  kv_lengths: optional int32 [B], the number of leading keys each example attends to (text token states before
  the padding); a padding mask both implementations fuse.
  """
  if implementation == 'cudnn':
    if kv_lengths is not None and k.shape[1] % 2:  # the kernel's padded backward wants an even key count (77)
      pad = lambda y: jnp.pad(y, ((0, 0), (0, 1), (0, 0), (0, 0)))  # a key past every length: masked out
      k, v = pad(k), pad(v)
    try:
      return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths, implementation='cudnn')
    except (RuntimeError, ValueError) as e:  # backend, dtype or shape unsupported: the XLA path computes the same
      # Without cuDNN (any CPU run) the call raises RuntimeError, which is expected there.
      # A dtype or shape the kernel lacks raises ValueError or a RuntimeError subclass, also when lowered for CUDA.
      if type(e) is RuntimeError and jax.default_backend() == 'cpu':  # pylint: disable=unidiomatic-typecheck
        _warn_cudnn_fallback('no GPU', logging.INFO)
      else:
        _warn_cudnn_fallback(f'{type(e).__name__}: {e}')
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths)


@functools.lru_cache(maxsize=None)
def _warn_cudnn_fallback(reason, level=logging.WARNING):
  """Logs each reason once per process; a CPU run has one reason, at INFO."""
  logging.log(level, 'attention_impl=cudnn is not available here (%s); using XLA attention instead', reason)


def rope_2d(head_dim, grid_h, grid_w, theta=10_000):
  """2-D axial rotary embedding of a grid_h x grid_w token grid (row-major tokens), as LightningDiT's
  VisionRotaryEmbeddingFast (EVA-02) builds it with pt_seq_len = ft_seq_len = the grid side, so positions are the
  integer row and column: the first half of each head turns with the token's row, the second half with its column,
  each by head_dim / 4 frequencies theta^(-4i / head_dim), every frequency on one interleaved channel pair
  (2j, 2j + 1). Returns (cos, sin), float32 numpy [grid_h * grid_w, head_dim], for `apply_rope`."""
  if head_dim % 4:
    raise ValueError(f'2-D RoPE needs a head dim divisible by 4 (row and column halves of channel pairs), '
                     f'got {head_dim}')
  freqs = 1.0 / theta**(np.arange(0, head_dim // 2, 2, dtype=np.float32) / np.float32(head_dim // 2))
  axis = lambda n: np.repeat(np.arange(n, dtype=np.float32)[:, None] * freqs, 2, axis=1)  # [n, head_dim / 2]
  rows = np.broadcast_to(axis(grid_h)[:, None], (grid_h, grid_w, head_dim // 2))
  cols = np.broadcast_to(axis(grid_w)[None], (grid_h, grid_w, head_dim // 2))
  angles = np.concatenate([rows, cols], axis=-1).reshape(grid_h * grid_w, head_dim)
  return np.cos(angles), np.sin(angles)


def apply_rope(x, cos, sin):
  """x [B, L, H, D] with each channel pair (2j, 2j + 1) turned by the angle whose cos and sin ([L, D], each value
  twice, from `rope_2d`) are given; in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  pairs = x32.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  turned = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  return (x32 * cos[:, None] + turned * sin[:, None]).astype(x.dtype)


class SwiGLU(nn.Module):
  """LightningDiT's SwiGLUFFN: w3(silu(a) * b) where [a | b] = w12(x), hidden_features wide each."""
  hidden_features: int
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self, x):
    dense = lambda width, name: nn.Dense(width, kernel_init=self.kernel_init, dtype=self.dtype, name=name)
    gate, value = jnp.split(dense(2 * self.hidden_features, 'w12')(x), 2, axis=-1)
    return dense(x.shape[-1], 'w3')(nn.silu(gate) * value)


def head_norm(kind, dtype, name):
  """qk-norm over each head's channels, one scale (and bias) shared by the heads, as LightningDiT's Attention
  builds it: torch's LayerNorm (eps 1e-5, scale and bias) for 'layer', RMSNorm (eps 1e-6, scale) for 'rms'."""
  if kind == 'rms':
    return nn.RMSNorm(epsilon=1e-6, dtype=dtype, name=name)
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


class MultiHeadSelfAttention(nn.Module):
  """Fused qkv projection, attention, output projection, on [B, L, C] tokens.

  qk_norm: None, or 'layer' / 'rms' (`head_norm`) applied to q and k per head. rope: optional (cos, sin) of
  `rope_2d`, which turns q and k after the qk-norm, before `attention` (so the cuDNN kernel still applies).
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
  qk_norm: str | None = None

  @nn.compact
  def __call__(self, x, rope=None):
    b, l, c = x.shape
    qkv = nn.Dense(3 * c, kernel_init=self.kernel_init, dtype=self.dtype, name='qkv')(x)
    q, k, v = [y[:, :, 0] for y in jnp.split(qkv.reshape(b, l, 3, self.num_heads, c // self.num_heads), 3, axis=2)]
    if self.qk_norm:
      q, k = head_norm(self.qk_norm, self.dtype, 'q_norm')(q), head_norm(self.qk_norm, self.dtype, 'k_norm')(k)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = attention(q, k, v, self.attention_impl)
    return nn.Dense(c, kernel_init=self.kernel_init, dtype=self.dtype, name='proj')(out.reshape(b, l, c))


class MultiHeadCrossAttention(nn.Module):
  """Queries from x [B, L, C], keys and values from a context [B, S, D] (e.g. text token states), with
  optional key lengths [B] (see `attention`); the output projection starts at zero, so a new layer starts as identity
  in its residual branch. kernel_init: that of q, k and v (DiT passes xavier-uniform, as PixArt-alpha initialises
  every linear of its blocks)."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = None
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x, context, context_lengths=None):
    b, l, c = x.shape
    heads = lambda y: y.reshape(y.shape[0], y.shape[1], self.num_heads, c // self.num_heads)
    dense = lambda name: nn.Dense(c, kernel_init=self.kernel_init, dtype=self.dtype, name=name)
    q = heads(dense('q')(x))
    k = heads(dense('k')(context.astype(self.dtype)))
    v = heads(dense('v')(context.astype(self.dtype)))
    out = attention(q, k, v, self.attention_impl, context_lengths)
    return nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='proj')(out.reshape(b, l, c))

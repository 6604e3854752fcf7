"""Stable Diffusion VAE (AutoencoderKL) in Flax linen, NHWC.

Mirrors diffusers' `AutoencoderKL` (the model behind `stabilityai/sd-vae-ft-mse`
and `sd-vae-ft-ema`) layer for layer. Submodule names follow the diffusers
state-dict keys with ``.N`` written as ``_N`` (``down_blocks.0.resnets.1`` ->
``down_blocks_0/resnets_1``), so `models/vae_convert.py` maps names mechanically.

Encoder: conv_in -> down blocks (``layers_per_block`` ResnetBlocks each, then a
stride-2 conv after padding (0, 1, 0, 1), except the last level) -> mid block
(resnet, single-head self-attention, resnet) -> GroupNorm, SiLU, conv_out to
2 * latent_channels; quant_conv (1x1) splits into mean and logvar, logvar
clipped to [-30, 20]. Decoder: post_quant_conv (1x1) -> conv_in -> mid block ->
up blocks (``layers_per_block + 1`` resnets, then nearest 2x upsample and a
conv, except the last level) -> GroupNorm, SiLU, conv_out.

Parameters are float32; ``dtype`` sets the compute dtype (e.g. bfloat16).
Normalization statistics and the attention softmax run in float32. Encoder and
decoder outputs are returned in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any

LATENT_SCALE = 0.18215
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0
NORM_EPS = 1e-6

# Stable Diffusion's VAE (sd-vae-ft-mse / sd-vae-ft-ema, SD 1.x and 2.x).
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
)

# A few-thousand-parameter VAE with the same structure, for fast CPU tests.
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    norm_num_groups=8,
)

# Parameter count of SD_VAE_CONFIG (equal to diffusers' AutoencoderKL).
SD_VAE_NUM_PARAMS = 83_653_863


def _group_norm(groups: int, dtype: Dtype, name: str) -> nn.GroupNorm:
  """GroupNorm as in torch: eps 1e-6, two-pass variance, float32 statistics."""
  return nn.GroupNorm(
      num_groups=groups,
      epsilon=NORM_EPS,
      use_fast_variance=False,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def _conv(features: int, kernel: int, dtype: Dtype, name: str | None = None, stride: int = 1,
          padding: Any = None) -> nn.Conv:
  """A conv with torch's default padding (kernel // 2 on each side) unless given."""
  if padding is None:
    pad = kernel // 2
    padding = ((pad, pad), (pad, pad))
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=padding,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


class ResnetBlock(nn.Module):
  """norm1, SiLU, conv1, norm2, SiLU, conv2, plus a 1x1 conv_shortcut when channels change."""

  out_channels: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _group_norm(self.groups, self.dtype, "norm1")(x)
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(nn.silu(h))
    h = _group_norm(self.groups, self.dtype, "norm2")(h)
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(nn.silu(h))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
    return x + h


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over all H*W positions with a GroupNorm and a residual."""

  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = _group_norm(self.groups, self.dtype, "group_norm")(x)
    h = h.reshape(batch, height * width, channels)
    dense = functools.partial(nn.Dense, channels, dtype=self.dtype, param_dtype=jnp.float32)
    q = dense(name="to_q")(h)
    k = dense(name="to_k")(h)
    v = dense(name="to_v")(h)
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * channels**-0.5, axis=-1).astype(v.dtype)
    h = jnp.einsum("bqk,bkc->bqc", weights, v)
    h = dense(name="to_out_0")(h)
    return x + h.reshape(batch, height, width, channels)


class MidBlock(nn.Module):
  """resnets_0 -> attentions_0 -> resnets_1, all at constant width."""

  channels: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_0")(x)
    x = SpatialSelfAttention(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
  """Pad bottom/right by one, then a stride-2 3x3 conv with no padding (H, W -> H/2, W/2)."""

  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.channels, 3, self.dtype, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, 3, self.dtype, "conv")(x)


class DownEncoderBlock(nn.Module):
  """``num_resnets`` ResnetBlocks then an optional Downsample (``downsamplers_0``)."""

  channels: int
  num_resnets: int
  groups: int
  add_downsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_resnets):
      x = ResnetBlock(self.channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.add_downsample:
      x = Downsample(self.channels, self.dtype, name="downsamplers_0")(x)
    return x


class UpDecoderBlock(nn.Module):
  """``num_resnets`` ResnetBlocks then an optional Upsample (``upsamplers_0``)."""

  channels: int
  num_resnets: int
  groups: int
  add_upsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_resnets):
      x = ResnetBlock(self.channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.add_upsample:
      x = Upsample(self.channels, self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """Image (B, H, W, in_channels) -> moments (B, H/f, W/f, 2 * latent_channels), f = 2**(levels-1)."""

  latent_channels: int
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  norm_num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels, groups, dtype = self.block_out_channels, self.norm_num_groups, self.dtype
    x = _conv(channels[0], 3, dtype, "conv_in")(x)
    for i, width in enumerate(channels):
      x = DownEncoderBlock(
          width,
          self.layers_per_block,
          groups,
          add_downsample=i < len(channels) - 1,
          dtype=dtype,
          name=f"down_blocks_{i}",
      )(x)
    x = MidBlock(channels[-1], groups, dtype, name="mid_block")(x)
    x = nn.silu(_group_norm(groups, dtype, "conv_norm_out")(x))
    return _conv(2 * self.latent_channels, 3, dtype, "conv_out")(x)


class Decoder(nn.Module):
  """Latent (B, h, w, latent_channels) -> image (B, h*f, w*f, out_channels)."""

  out_channels: int
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  norm_num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    channels, groups, dtype = self.block_out_channels, self.norm_num_groups, self.dtype
    x = _conv(channels[-1], 3, dtype, "conv_in")(z)
    x = MidBlock(channels[-1], groups, dtype, name="mid_block")(x)
    for i, width in enumerate(reversed(channels)):
      x = UpDecoderBlock(
          width,
          self.layers_per_block + 1,
          groups,
          add_upsample=i < len(channels) - 1,
          dtype=dtype,
          name=f"up_blocks_{i}",
      )(x)
    x = nn.silu(_group_norm(groups, dtype, "conv_norm_out")(x))
    return _conv(self.out_channels, 3, dtype, "conv_out")(x)


def sample_diagonal_gaussian(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
  """One draw of mean + exp(logvar / 2) * N(0, I)."""
  noise = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * noise


class AutoencoderKL(nn.Module):
  """The KL-regularised autoencoder of latent diffusion; images and latents are NHWC."""

  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  dtype: Dtype = jnp.float32

  def setup(self):
    common = dict(
        block_out_channels=tuple(self.block_out_channels),
        layers_per_block=self.layers_per_block,
        norm_num_groups=self.norm_num_groups,
        dtype=self.dtype,
    )
    self.encoder = Encoder(latent_channels=self.latent_channels, **common)
    self.decoder = Decoder(out_channels=self.out_channels, **common)
    self.quant_conv = _conv(2 * self.latent_channels, 1, self.dtype)
    self.post_quant_conv = _conv(self.latent_channels, 1, self.dtype)

  @property
  def downsample_factor(self) -> int:
    """Spatial reduction from image to latent (8 for the SD VAE)."""
    return 2**(len(self.block_out_channels) - 1)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images in [-1, 1] -> (mean, logvar) of the posterior, float32, logvar clipped."""
    moments = self.quant_conv(self.encoder(x.astype(self.dtype))).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

  def sample_latent(self, mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A posterior sample (unscaled latent)."""
    return sample_diagonal_gaussian(mean, logvar, rng)

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents -> images (roughly [-1, 1], not clipped), float32."""
    return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Reconstruct: decode the posterior mean, or a posterior sample when ``rng`` is given."""
    mean, logvar = self.encode(x)
    z = mean if rng is None else sample_diagonal_gaussian(mean, logvar, rng)
    return self.decode(z)


def build_vae(config: Mapping[str, Any] = SD_VAE_CONFIG, dtype: Dtype = jnp.float32) -> AutoencoderKL:
  """An AutoencoderKL from a config dict (see SD_VAE_CONFIG for the keys)."""
  known = {
      "in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block", "norm_num_groups"
  }
  unknown = set(config) - known
  if unknown:
    raise ValueError(f"Unknown VAE config keys {sorted(unknown)}; expected a subset of {sorted(known)}")
  kwargs = dict(config)
  if "block_out_channels" in kwargs:
    kwargs["block_out_channels"] = tuple(kwargs["block_out_channels"])
  return AutoencoderKL(dtype=dtype, **kwargs)


def init_vae_params(model: AutoencoderKL, rng: jax.Array, image_size: int = 32) -> dict:
  """Randomly initialised float32 params ({'params': ...} collection)."""
  x = jnp.zeros((1, image_size, image_size, model.in_channels), jnp.float32)
  return model.init(rng, x)


def vae_param_shapes(model: AutoencoderKL) -> dict:
  """The params pytree as ShapeDtypeStructs, computed without allocating anything."""
  x = jax.ShapeDtypeStruct((1, model.downsample_factor, model.downsample_factor, model.in_channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def images_to_model_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; float input is assumed to be in [-1, 1] already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("model", "sample", "scale"))
def _encode_to_latents(model, params, images, rng, sample, scale):
  mean, logvar = model.apply(params, images_to_model_range(images), method=AutoencoderKL.encode)
  z = sample_diagonal_gaussian(mean, logvar, rng) if sample else mean
  return z * scale


@functools.partial(jax.jit, static_argnames=("model", "scale"))
def _decode_latents(model, params, latents, scale):
  return model.apply(params, latents / scale, method=AutoencoderKL.decode)


def encode_to_latents(params: Mapping, images: jax.Array, rng: jax.Array | None = None, sample: bool = False,
                      scale: float = LATENT_SCALE, config: Mapping[str, Any] = SD_VAE_CONFIG,
                      dtype: Dtype = jnp.float32) -> jax.Array:
  """NHWC images (uint8 [0, 255] or float [-1, 1]) -> scaled latents (B, H/8, W/8, 4) for the SD VAE.

    Returns ``scale * mean`` by default, ``scale * (posterior sample)`` when ``sample`` (needs ``rng``).
    ``params`` is the variables dict ``{'params': ...}`` (a bare params tree is accepted too).
    """
  if sample and rng is None:
    raise ValueError("encode_to_latents(sample=True) needs an rng key")
  if rng is None:
    rng = jax.random.key(0)  # unused when sample is False
  model = build_vae(config, dtype)
  return _encode_to_latents(model, _as_variables(params), jnp.asarray(images), rng, sample, float(scale))


def decode_latents(params: Mapping, latents: jax.Array, scale: float = LATENT_SCALE,
                   config: Mapping[str, Any] = SD_VAE_CONFIG, dtype: Dtype = jnp.float32) -> jax.Array:
  """Scaled latents -> NHWC float32 images, clipped to [-1, 1]."""
  model = build_vae(config, dtype)
  images = _decode_latents(model, _as_variables(params), jnp.asarray(latents), float(scale))
  return jnp.clip(images, -1.0, 1.0)


def _as_variables(params: Mapping) -> Mapping:
  """Accept either {'params': tree} or the bare tree."""
  return params if "params" in params else {"params": params}

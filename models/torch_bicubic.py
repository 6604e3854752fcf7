"""Bicubic resampling that reproduces `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)`.

A separable resize is one [out, in] matrix per axis; these are built here in numpy from torch's own index and
weight rules, so a resize in JAX is two einsums with constant matrices, numerically torch's result:

- `antialias=False` (torch's `upsample_bicubic2d`): source coordinate `scale * (i + 0.5) - 0.5`, the four taps
  around it with Keys' cubic convolution at a = -0.75, indices clamped to the edge.
- `antialias=True` (torch's `_upsample_bicubic2d_aa`, Pillow's rule): the cubic at a = -0.5 stretched by the
  downsampling factor, taps inside the image only, weights normalised to sum to one.

`scale` is `in / out` when torch is given `size`, and `1 / scale_factor` when it is given `scale_factor`.
`jax.image.resize(method='bicubic')` is neither (a = -0.5 without antialiasing, and it antialiases on
downsampling with a different support), hence this module.
"""
import math

import jax.numpy as jnp
import numpy as np

SHARP_CUBIC_A = -0.75  # torch's bicubic without antialiasing
ANTIALIAS_CUBIC_A = -0.5  # torch's bicubic with antialiasing (as Pillow)


def keys_cubic(x, a):
  """Keys' cubic convolution kernel at distance `x`."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _sharp_matrix(in_size, out_size, scale):
  # Coordinates and weights in float32, as torch computes them for float32 images.
  source = np.float32(scale) * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  first = np.floor(source)
  frac = source - first
  matrix = np.zeros((out_size, in_size), np.float32)
  for tap in range(-1, 3):
    columns = np.clip(first + tap, 0, in_size - 1).astype(int)
    np.add.at(matrix, (np.arange(out_size), columns), keys_cubic(frac - np.float32(tap), np.float32(SHARP_CUBIC_A)))
  return matrix


def _antialias_matrix(in_size, out_size, scale):
  f32 = np.float32  # torch computes these in the image's precision
  scale = f32(scale)
  support = f32(2.0) * max(scale, f32(1.0))
  stretch = f32(1.0) / max(scale, f32(1.0))
  matrix = np.zeros((out_size, in_size), f32)
  for i in range(out_size):
    center = scale * (f32(i) + f32(0.5))
    start = max(int(center - support + f32(0.5)), 0)
    stop = min(int(center + support + f32(0.5)), in_size)
    taps = np.arange(start, stop, dtype=f32)
    weights = keys_cubic((taps - center + f32(0.5)) * stretch, f32(ANTIALIAS_CUBIC_A))
    matrix[i, start:stop] = weights / weights.sum()
  return matrix


def resize_matrix(in_size, out_size, scale=None, antialias=False):
  """[out_size, in_size] float32 matrix of torch's 1-D bicubic resize (align_corners=False).

  `scale`: the source step per output pixel, `in_size / out_size` unless given (torch's 1 / scale_factor)."""
  scale = in_size / out_size if scale is None else scale
  if in_size == out_size and (antialias or math.isclose(scale, 1.0)):  # torch copies an axis it need not resize
    return np.eye(in_size, dtype=np.float32)
  build = _antialias_matrix if antialias else _sharp_matrix
  return build(in_size, out_size, scale).astype(np.float32)


def resize_nhwc(x, height, width, antialias=False):
  """Bicubic resize of an [B, H, W, C] array to `height` x `width` as torch's interpolate with `size=`."""
  rows = jnp.asarray(resize_matrix(x.shape[1], height, antialias=antialias))
  columns = jnp.asarray(resize_matrix(x.shape[2], width, antialias=antialias))
  x = jnp.einsum('oh,bhwc->bowc', rows, x, precision='highest')
  return jnp.einsum('pw,bowc->bopc', columns, x, precision='highest')

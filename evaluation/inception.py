"""FID Inception v3 in Flax linen (NHWC): the network behind FID, Inception Score and precision/recall.

A port of pytorch-fid's `fid_inception_v3`, itself a port of TensorFlow's 2015-12-05 Inception graph:
torchvision's `inception_v3` layout without the aux head, a 1008-way fc, and four patched blocks
(Mixed_5b-d, Mixed_6b-e and Mixed_7b average-pool their pool branch with count_include_pad=False;
Mixed_7c max-pools it). Module and parameter names follow torchvision (`Mixed_5b/branch1x1/conv`,
`.../bn`, `fc`), so converting `pt_inception-2015-12-05-6726825d.pth` is a mechanical rename; see
`evaluation/inception_convert.py`. Variables: `params` (conv kernels, BatchNorm scale/bias, fc) and
`batch_stats` (BatchNorm running mean/var). 23,850,960 parameters.

Input: uint8 or float images [N, H, W, 3] in [0, 255], resized to 299x299 and scaled to [-1, 1] in one of two
ways (`preprocessing`), which give slightly different FIDs:
- 'pytorch_fid' (pytorch-fid): bilinear as torch's `F.interpolate(mode='bilinear',
  align_corners=False)` (half-pixel centres, no antialiasing, also when downsampling), then x / 127.5 - 1;
- 'tensorflow': what the 2015 TF graph does to what it is fed (the ADM evaluator behind ADM's and DiT's FIDs,
  TTUR's fid.py, torch-fidelity and so torchmetrics' FID and IS): TF1's ResizeBilinear (no half-pixel centres:
  source = destination x in / out), then (x - 128) / 128.

Outputs: pool3 (FID, precision/recall), the logits (Inception Score) and the spatial features of sFID
(Nash et al. 2021, reported by ADM and DiT): the ADM evaluator takes the TF graph's `mixed_6/conv` tensor,
the 1x1 branch of its seventh mixed block (Mixed_6d here: conv, BatchNorm, ReLU), keeps its first 7
channels and flattens them in (row, column, channel) order: 17 x 17 x 7 = 2023 numbers at 299x299.
"""
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PREPROCESSING = ('pytorch_fid', 'tensorflow')  # of the network's input: how images become [-1, 1] at 299
INCEPTION_SIZE = 299
NUM_CLASSES = 1008
POOL3_DIM = 2048
BATCHNORM_EPS = 1e-3
SPATIAL_CHANNELS = 7  # sFID keeps the first 7 channels of Mixed_6d's 1x1 branch
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # at the 299x299 input


class InceptionOutputs(NamedTuple):
  pool3: jax.Array  # [N, 2048] final average pool: the FID / precision-recall features
  logits: jax.Array  # [N, 1008] fc(pool3), with the bias
  logits_unbiased: jax.Array  # [N, 1008] pool3 @ fc kernel: what the standard IS code takes softmax of
  spatial: jax.Array  # [N, 2023] Mixed_6d.branch1x1[..., :7] flattened (h, w, c): the sFID features


def _bilinear_taps(in_size, out_size):
  """Source indices and weights of torch's bilinear resize (align_corners=False, no antialias).

  As torch's kernels compute it: scale = float32(in / out), src = max(scale * (dst + 0.5) - 0.5, 0)
  in float32 with a fused multiply-add (one rounding, done here in float64 then rounded).
  """
  f32 = np.float32
  scale = np.float64(f32(in_size) / f32(out_size))
  src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(f32)
  src = np.maximum(src, f32(0))
  lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(f32), f32(0), f32(1))
  return lo, hi, frac


def _tf1_bilinear_taps(in_size, out_size):
  """Source indices and weights of TF1's ResizeBilinear (align_corners=False, half_pixel_centers=False), as its
  kernel computes them in float32: scale = in / out, src = dst * scale, lo = floor(src), hi = min(ceil(src),
  in - 1), weight src - lo."""
  f32 = np.float32
  src = np.arange(out_size, dtype=f32) * (f32(in_size) / f32(out_size))
  lo = np.floor(src)
  hi = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
  return lo.astype(np.int32), hi, (src - lo).astype(f32)


def _resize_axis(x, axis, out_size, taps=_bilinear_taps):
  lo, hi, frac = taps(x.shape[axis], out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray(frac).reshape(shape)
  x_lo, x_hi = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
  return x_lo + (x_hi - x_lo) * frac


def resize_bilinear(images, height, width, half_pixel_centers=True):
  """Bilinear resize of NHWC float images, matching torch F.interpolate(align_corners=False), or with
  half_pixel_centers=False TF1's ResizeBilinear (align_corners=False)."""
  taps = _bilinear_taps if half_pixel_centers else _tf1_bilinear_taps
  if images.shape[1] != height:
    images = _resize_axis(images, 1, height, taps)
  if images.shape[2] != width:
    images = _resize_axis(images, 2, width, taps)
  return images


def _check_preprocessing(preprocessing):
  if preprocessing not in PREPROCESSING:
    raise ValueError(f'preprocessing={preprocessing!r}: choose one of {", ".join(PREPROCESSING)}')


def scale_to_unit_range(x, preprocessing='pytorch_fid'):
  """[0, 255] -> [-1, 1] as `preprocessing` does it: x / 127.5 - 1 ('pytorch_fid', in its order) or
  (x - 128) / 128 ('tensorflow')."""
  _check_preprocessing(preprocessing)
  x = x.astype(jnp.float32)
  return 2.0 * (x / 255.0) - 1.0 if preprocessing == 'pytorch_fid' else (x - 128.0) / 128.0


def preprocess_images(images, size=INCEPTION_SIZE, preprocessing='pytorch_fid'):
  """[N, H, W, 3] images in [0, 255] -> float32 [N, size, size, 3] in [-1, 1], resized and scaled as
  `preprocessing` (module docstring) does it."""
  _check_preprocessing(preprocessing)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected NHWC RGB images [N, H, W, 3], got shape {images.shape}')
  if preprocessing == 'pytorch_fid':  # scaled to [0, 1] before the resize, as pytorch-fid
    return 2.0 * resize_bilinear(images.astype(jnp.float32) / 255.0, size, size) - 1.0
  return scale_to_unit_range(resize_bilinear(images.astype(jnp.float32), size, size, half_pixel_centers=False),
                             preprocessing)


def _pair(value):
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU; torch's padding convention."""
  features: int
  kernel_size: tuple = (1, 1)
  stride: int = 1
  padding: tuple = (0, 0)
  precision: str = 'highest'

  @nn.compact
  def __call__(self, x):
    pad_h, pad_w = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.stride),
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False, precision=self.precision, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCHNORM_EPS, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x):
  """TF's 3x3 stride-1 'SAME' average pool: zero padding is left out of the average."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride, padding):
  return nn.max_pool(x, (3, 3), (stride, stride), padding=((padding, padding),) * 2)


class FIDInceptionA(nn.Module):
  """Mixed_5b/5c/5d (35x35)."""
  pool_features: int
  precision: str = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda name, *args, **kw: BasicConv2d(*args, precision=self.precision, name=name, **kw)
    branch1x1 = conv('branch1x1', 64)(x)
    branch5x5 = conv('branch5x5_1', 48)(x)
    branch5x5 = conv('branch5x5_2', 64, 5, padding=2)(branch5x5)
    branch3x3dbl = conv('branch3x3dbl_1', 64)(x)
    branch3x3dbl = conv('branch3x3dbl_2', 96, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = conv('branch3x3dbl_3', 96, 3, padding=1)(branch3x3dbl)
    branch_pool = conv('branch_pool', self.pool_features)(_avg_pool_3x3_same(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 -> 17x17 reduction (unchanged from torchvision)."""
  precision: str = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda name, *args, **kw: BasicConv2d(*args, precision=self.precision, name=name, **kw)
    branch3x3 = conv('branch3x3', 384, 3, stride=2)(x)
    branch3x3dbl = conv('branch3x3dbl_1', 64)(x)
    branch3x3dbl = conv('branch3x3dbl_2', 96, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = conv('branch3x3dbl_3', 96, 3, stride=2)(branch3x3dbl)
    branch_pool = _max_pool_3x3(x, stride=2, padding=0)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b/6c/6d/6e (17x17) with factorised 7x7 convolutions. Returns (output, its 1x1 branch)."""
  channels_7x7: int
  precision: str = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda name, *args, **kw: BasicConv2d(*args, precision=self.precision, name=name, **kw)
    c7 = self.channels_7x7
    branch1x1 = conv('branch1x1', 192)(x)
    branch7x7 = conv('branch7x7_1', c7)(x)
    branch7x7 = conv('branch7x7_2', c7, (1, 7), padding=(0, 3))(branch7x7)
    branch7x7 = conv('branch7x7_3', 192, (7, 1), padding=(3, 0))(branch7x7)
    branch7x7dbl = conv('branch7x7dbl_1', c7)(x)
    branch7x7dbl = conv('branch7x7dbl_2', c7, (7, 1), padding=(3, 0))(branch7x7dbl)
    branch7x7dbl = conv('branch7x7dbl_3', c7, (1, 7), padding=(0, 3))(branch7x7dbl)
    branch7x7dbl = conv('branch7x7dbl_4', c7, (7, 1), padding=(3, 0))(branch7x7dbl)
    branch7x7dbl = conv('branch7x7dbl_5', 192, (1, 7), padding=(0, 3))(branch7x7dbl)
    branch_pool = conv('branch_pool', 192)(_avg_pool_3x3_same(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1), branch1x1


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 -> 8x8 reduction (unchanged from torchvision)."""
  precision: str = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda name, *args, **kw: BasicConv2d(*args, precision=self.precision, name=name, **kw)
    branch3x3 = conv('branch3x3_1', 192)(x)
    branch3x3 = conv('branch3x3_2', 320, 3, stride=2)(branch3x3)
    branch7x7x3 = conv('branch7x7x3_1', 192)(x)
    branch7x7x3 = conv('branch7x7x3_2', 192, (1, 7), padding=(0, 3))(branch7x7x3)
    branch7x7x3 = conv('branch7x7x3_3', 192, (7, 1), padding=(3, 0))(branch7x7x3)
    branch7x7x3 = conv('branch7x7x3_4', 192, 3, stride=2)(branch7x7x3)
    branch_pool = _max_pool_3x3(x, stride=2, padding=0)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (pool='avg', FIDInceptionE_1) and Mixed_7c (pool='max', FIDInceptionE_2)."""
  pool: str = 'avg'
  precision: str = 'highest'

  @nn.compact
  def __call__(self, x):
    conv = lambda name, *args, **kw: BasicConv2d(*args, precision=self.precision, name=name, **kw)
    branch1x1 = conv('branch1x1', 320)(x)
    branch3x3 = conv('branch3x3_1', 384)(x)
    branch3x3 = jnp.concatenate([
        conv('branch3x3_2a', 384, (1, 3), padding=(0, 1))(branch3x3),
        conv('branch3x3_2b', 384, (3, 1), padding=(1, 0))(branch3x3)
    ], axis=-1)
    branch3x3dbl = conv('branch3x3dbl_1', 448)(x)
    branch3x3dbl = conv('branch3x3dbl_2', 384, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        conv('branch3x3dbl_3a', 384, (1, 3), padding=(0, 1))(branch3x3dbl),
        conv('branch3x3dbl_3b', 384, (3, 1), padding=(1, 0))(branch3x3dbl)
    ], axis=-1)
    if self.pool == 'avg':
      pooled = _avg_pool_3x3_same(x)
    elif self.pool == 'max':
      pooled = _max_pool_3x3(x, stride=1, padding=1)
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    branch_pool = conv('branch_pool', 192)(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
  """FID Inception v3. __call__(images in [0, 255], NHWC) -> InceptionOutputs.

  resize_input=False skips the resize to 299 (the net runs on any size >= 75x75; tests use that);
  preprocessing: 'pytorch_fid' or 'tensorflow' (module docstring); precision is the conv/fc matmul precision
  ('highest' keeps float32 exact on GPUs with TF32).
  """
  resize_input: bool = True
  precision: str = 'highest'
  preprocessing: str = 'pytorch_fid'

  @nn.compact
  def __call__(self, images):
    if self.resize_input:
      x = preprocess_images(images, preprocessing=self.preprocessing)
    else:
      x = scale_to_unit_range(images, self.preprocessing)
    p = self.precision
    conv = lambda name, *args, **kw: BasicConv2d(*args, precision=p, name=name, **kw)
    x = conv('Conv2d_1a_3x3', 32, 3, stride=2)(x)
    x = conv('Conv2d_2a_3x3', 32, 3)(x)
    x = conv('Conv2d_2b_3x3', 64, 3, padding=1)(x)
    x = _max_pool_3x3(x, stride=2, padding=0)
    x = conv('Conv2d_3b_1x1', 80)(x)
    x = conv('Conv2d_4a_3x3', 192, 3)(x)
    x = _max_pool_3x3(x, stride=2, padding=0)
    x = FIDInceptionA(32, precision=p, name='Mixed_5b')(x)
    x = FIDInceptionA(64, precision=p, name='Mixed_5c')(x)
    x = FIDInceptionA(64, precision=p, name='Mixed_5d')(x)
    x = InceptionB(precision=p, name='Mixed_6a')(x)
    x, _ = FIDInceptionC(128, precision=p, name='Mixed_6b')(x)
    x, _ = FIDInceptionC(160, precision=p, name='Mixed_6c')(x)
    x, mixed_6_conv = FIDInceptionC(160, precision=p, name='Mixed_6d')(x)  # the TF graph's mixed_6/conv
    x, _ = FIDInceptionC(192, precision=p, name='Mixed_6e')(x)
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(len(x), -1)
    x = InceptionD(precision=p, name='Mixed_7a')(x)
    x = FIDInceptionE('avg', precision=p, name='Mixed_7b')(x)
    x = FIDInceptionE('max', precision=p, name='Mixed_7c')(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=p, name='fc')
    logits = fc(pool3)
    logits_unbiased = jnp.dot(pool3, fc.variables['params']['kernel'], precision=p)
    return InceptionOutputs(pool3, logits, logits_unbiased, spatial)


def init_variables(model=None, seed=0, image_size=75):
  """Randomly initialised variables {'params', 'batch_stats'} (shapes do not depend on image_size)."""
  model = model or FIDInceptionV3(resize_input=False)
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.jit(model.init)(jax.random.PRNGKey(seed), images)


def variable_shapes(model=None):
  """{'params': ..., 'batch_stats': ...} as a tree of ShapeDtypeStructs, without computing anything."""
  return jax.eval_shape(lambda: init_variables(model))


def count_params(variables):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables['params']))

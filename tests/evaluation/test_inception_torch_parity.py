"""Parity of the Flax FID Inception with a plain-torch reference (no torchvision needed).

The reference below is written from the public architecture (torchvision's inception_v3 with
pytorch-fid's FIDInceptionA/C/E_1/E_2 blocks, 1008 classes, no aux head), with torchvision's
module names, so `load_state_dict(strict=True)` also checks the converter's key names and shapes.
tests/evaluation/test_inception_parity.py checks against torchvision itself where it is installed.
"""
import jax
import numpy as np
import pytest

from evaluation import inception, inception_convert

torch = pytest.importorskip('torch')
nn = torch.nn
F = torch.nn.functional


class BasicConv2d(nn.Module):
  def __init__(self, cin, cout, **conv_kwargs):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **conv_kwargs)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_tf_avg_pool(x))
    ], 1)


class InceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        F.max_pool2d(x, kernel_size=3, stride=2)
    ], 1)


class FIDInceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    dbl = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      dbl = layer(dbl)
    return torch.cat([
        self.branch1x1(x),
        self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), dbl,
        self.branch_pool(_tf_avg_pool(x))
    ], 1)


class InceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b = self.branch7x7x3_1(x)
    for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b = layer(b)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (pool='avg', count_include_pad=False) and FIDInceptionE_2 (pool='max')."""
  def __init__(self, cin, pool):
    super().__init__()
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    if self.pool == 'avg':
      pooled = _tf_avg_pool(x)
    else:
      pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return torch.cat([
        self.branch1x1(x),
        torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
        torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1),
        self.branch_pool(pooled)
    ], 1)


class TorchFIDInception(nn.Module):
  """pytorch-fid's network; forward(NCHW in [0, 1]) -> (pool3, logits, spatial), resized as pytorch-fid.

  spatial: the ADM evaluator's sFID features, its TF graph's mixed_6/conv (Mixed_6d's 1x1 branch after
  BatchNorm and ReLU), first 7 channels, flattened NHWC as evaluator.py's `spatial.reshape([N, -1])` does.
  """
  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = FIDInceptionA(192, 32)
    self.Mixed_5c = FIDInceptionA(256, 64)
    self.Mixed_5d = FIDInceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, 128)
    self.Mixed_6c = FIDInceptionC(768, 160)
    self.Mixed_6d = FIDInceptionC(768, 160)
    self.Mixed_6e = FIDInceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, 'avg')
    self.Mixed_7c = FIDInceptionE(2048, 'max')
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x, resize=True):
    if resize:
      x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
      if name == '6d':
        spatial = self.Mixed_6d.branch1x1(x)[:, :7].permute(0, 2, 3, 1).flatten(1)
      x = getattr(self, 'Mixed_' + name)(x)
    pool3 = x.mean(dim=(2, 3))
    return pool3, self.fc(pool3), spatial


def _relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope='module')
def state_dict():
  return inception_convert.random_state_dict(seed=1)


@pytest.fixture(scope='module')
def torch_model(state_dict):
  model = TorchFIDInception().eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  return model


@pytest.fixture(scope='module')
def variables(state_dict):
  return inception_convert.convert_state_dict(state_dict)


def _torch_outputs(model, images_uint8, resize):
  x = torch.from_numpy(images_uint8.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
  with torch.no_grad():
    return tuple(out.numpy() for out in model(x, resize=resize))


def test_reference_has_the_real_parameter_count(torch_model):
  assert sum(p.numel() for p in torch_model.parameters()) == 23_850_960


@pytest.mark.parametrize('height, width', [(75, 75), (83, 101)])
def test_features_match_torch_without_resize(torch_model, variables, height, width):
  images = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
  model = inception.FIDInceptionV3(resize_input=False)
  outputs = jax.jit(model.apply)(variables, images)
  pool3, logits, spatial = _torch_outputs(torch_model, images, resize=False)
  assert _relative_error(outputs.pool3, pool3) < 1e-4
  assert _relative_error(outputs.logits, logits) < 1e-4
  assert _relative_error(outputs.spatial, spatial) < 1e-4


def test_features_match_torch_with_resize_to_299(torch_model, variables):
  images = np.random.default_rng(7).integers(0, 256, (1, 64, 48, 3), dtype=np.uint8)
  outputs = jax.jit(inception.FIDInceptionV3().apply)(variables, images)
  pool3, logits, spatial = _torch_outputs(torch_model, images, resize=True)
  assert _relative_error(outputs.pool3, pool3) < 1e-4
  assert _relative_error(outputs.logits, logits) < 1e-4
  assert spatial.shape == outputs.spatial.shape == (1, inception.SPATIAL_DIM)  # 17 x 17 x 7 = 2023
  error = _relative_error(outputs.spatial, spatial)
  print(f'sFID features: relative error {error:.1e} against the torch reference')
  assert error < 1e-4
  # another 7 channels, or the channel-major (NCHW) flattening, would be far off
  assert _relative_error(
      np.asarray(outputs.spatial).reshape(1, 17, 17, 7).transpose(0, 3, 1, 2).reshape(1, -1), spatial) > 0.1


@pytest.mark.parametrize('height, width', [(32, 32), (299, 299), (512, 400), (17, 640), (300, 298)])
def test_resize_matches_torch_interpolate(height, width):
  images = np.random.default_rng(height * width).random((2, height, width, 3)).astype(np.float32)
  ours = np.asarray(inception.resize_bilinear(images, 299, 299))
  expected = F.interpolate(
      torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299), mode='bilinear',
      align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, expected, atol=2e-6, rtol=0)

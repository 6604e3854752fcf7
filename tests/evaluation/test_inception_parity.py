"""Parity of the Flax FID Inception with torchvision's inception_v3 patched as pytorch-fid does.

Needs torchvision (the GPU machine has it; CI here skips). The network is torchvision's
inception_v3(num_classes=1008, aux_logits=False) with Mixed_5b-d, 6b-e, 7b, 7c replaced by the FID
blocks: pytorch-fid's own classes when `pytorch_fid` is importable, else the subclasses below,
which override only the pool branch as pytorch-fid does. Random weights with the real key names
are loaded strictly, so this also checks the converter's names and shapes against torchvision.
Torch runs on CPU in float32; JAX runs on its default device with float32 ('highest') matmuls.
"""
import jax
import numpy as np
import pytest

from evaluation import inception, inception_convert

torchvision = pytest.importorskip('torchvision')
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,wrong-import-position
from torchvision.models import inception as tv_inception  # pylint: disable=g-import-not-at-top,wrong-import-position


def _tf_avg_pool(x):
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(tv_inception.InceptionA):
  def forward(self, x):
    branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
    branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_tf_avg_pool(x))], 1)


class FIDInceptionC(tv_inception.InceptionC):
  def forward(self, x):
    branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    dbl = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      dbl = layer(dbl)
    return torch.cat([self.branch1x1(x), branch7x7, dbl, self.branch_pool(_tf_avg_pool(x))], 1)


class _FIDInceptionE(tv_inception.InceptionE):
  """Subclasses define _pool: average (E_1) or max (E_2) pooling of the pool branch."""
  def forward(self, x):
    b3 = self.branch3x3_1(x)
    dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    return torch.cat([
        self.branch1x1(x),
        self.branch3x3_2a(b3),
        self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(dbl),
        self.branch3x3dbl_3b(dbl),
        self.branch_pool(self._pool(x))
    ], 1)


class FIDInceptionE_1(_FIDInceptionE):  # pylint: disable=invalid-name
  def _pool(self, x):
    return _tf_avg_pool(x)


class FIDInceptionE_2(_FIDInceptionE):  # pylint: disable=invalid-name
  def _pool(self, x):
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _fid_blocks():
  try:
    from pytorch_fid import inception as pytorch_fid_inception  # pylint: disable=g-import-not-at-top
    return (pytorch_fid_inception.FIDInceptionA, pytorch_fid_inception.FIDInceptionC,
            pytorch_fid_inception.FIDInceptionE_1, pytorch_fid_inception.FIDInceptionE_2)
  except ImportError:
    return FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2


def torchvision_fid_inception(state_dict):
  """torchvision inception_v3 patched into pytorch-fid's FID network, with the given weights."""
  block_a, block_c, block_e1, block_e2 = _fid_blocks()
  net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
  net.Mixed_5b = block_a(192, pool_features=32)
  net.Mixed_5c = block_a(256, pool_features=64)
  net.Mixed_5d = block_a(288, pool_features=64)
  net.Mixed_6b = block_c(768, channels_7x7=128)
  net.Mixed_6c = block_c(768, channels_7x7=160)
  net.Mixed_6d = block_c(768, channels_7x7=160)
  net.Mixed_6e = block_c(768, channels_7x7=192)
  net.Mixed_7b = block_e1(1280)
  net.Mixed_7c = block_e2(2048)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  return net.eval()


def torchvision_outputs(net, images_uint8, resize):
  """(pool3, logits, spatial) as pytorch-fid computes them: [0, 1] input, bilinear resize, 2x - 1; spatial: the
  sFID features of the ADM evaluator (Mixed_6d's 1x1 branch, 7 channels, flattened NHWC)."""
  x = torch.from_numpy(images_uint8.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
  if resize:
    x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
  captured = {}
  hooks = [
      net.avgpool.register_forward_hook(lambda m, i, o: captured.update(pool3=o)),
      net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.update(spatial=o))
  ]
  try:
    with torch.no_grad():
      logits = net(2 * x - 1)
  finally:
    for hook in hooks:
      hook.remove()
  spatial = captured['spatial'][:, :7].permute(0, 2, 3, 1).flatten(1)
  return torch.flatten(captured['pool3'], 1).numpy(), logits.numpy(), spatial.numpy()


def _relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope='module')
def state_dict():
  return inception_convert.random_state_dict(seed=2)


@pytest.fixture(scope='module')
def net(state_dict):
  return torchvision_fid_inception(state_dict)


def test_torchvision_parameter_count(net):
  assert sum(p.numel() for p in net.parameters()) == 23_850_960


@pytest.mark.parametrize('height, width, resize', [(75, 75, False), (128, 96, True), (512, 512, True)])
def test_pool3_matches_torchvision(net, state_dict, height, width, resize):
  images = np.random.default_rng(height + width).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
  variables = inception_convert.convert_state_dict(state_dict)
  outputs = jax.jit(inception.FIDInceptionV3(resize_input=resize).apply)(variables, images)
  pool3, logits, spatial = torchvision_outputs(net, images, resize)
  assert _relative_error(outputs.pool3, pool3) < 1e-4
  assert _relative_error(outputs.logits, logits) < 1e-4
  assert _relative_error(outputs.spatial, spatial) < 1e-4
  # The two images differ by far more than the port's error.
  assert np.abs(pool3[0] - pool3[1]).max() > 100 * np.abs(np.asarray(outputs.pool3) - pool3).max()

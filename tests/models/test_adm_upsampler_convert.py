"""models/adm_convert.py on guided-diffusion's super-resolution models (SuperResModel; configs/adm_upsampler.py).

SuperResModel is a UNetModel with 6 input channels whose forward upsamples `low_res` bilinearly
(F.interpolate(mode='bilinear')) to the image size and concatenates it to x. The reference here is that forward
restated: diffusers 0.42.1's UNet2DModel with 6 input channels (the U-Net mapping tests/models/test_adm_convert.py checks)
on torch's own interpolation. The released layouts are pinned by digests of guided-diffusion's own
sr_create_model state dicts (README flags, torch 2.13, meta device).
"""
import numpy as np
import pytest

from jobs import import_weights
from configs.adm_imagenet import get_config as adm_config
from configs.adm_upsampler import PARAMS, get_config
from configs.validate import validate_config
from models import build_model
from models.adm_convert import params_from_state_dict
from tests.models.test_adm_convert import (TINY, TOLERANCE, adm_layout, diffusers_state_dict, diffusers_unet,
                                           layout_digest, random_state_dict, released_layout, zeros_state_dict)
from models.adm_variants import UPSAMPLERS
from models.shapes import abstract_params
from training.state import count_params

# (key count, parameter count, sha256 of the sorted [key, shape] list as JSON, first 16 hex digits)
RELEASED_LAYOUTS = {'64_256': (567, 311_795_910, '2fb59427623d9c4c'), '128_512': (537, 308_835_270, '2359f741d690e76d')}
LOW = 4  # TINY's 16x16 images upsampled from 4x4


def upsampler_layout(name):
  arch = UPSAMPLERS[name]
  return adm_layout(arch['image_size'], 192, (1, 1, 2, 2, 4, 4), 2, arch['attn_resolutions'], 1000, in_channels=6)


def tiny_config(updown):
  """configs/adm_upsampler.py cut to TINY, float32, XLA attention."""
  c = get_config('64_256')
  c.data.update(image_size=TINY['size'], num_classes=TINY['classes'])
  c.model.update(base_channels=TINY['channels'], channel_mult=TINY['mult'], num_res_blocks=TINY['blocks'],
                 attn_resolutions=TINY['attention'], num_head_channels=TINY['head_channels'], resblock_updown=updown,
                 low_res_size=LOW, attention_impl=None)
  c.train.compute_dtype = 'float32'
  return validate_config(c)


@pytest.mark.parametrize('updown', [True, False], ids=['resblock_updown', 'conv_resample'])
def test_matches_the_reference_with_the_upsampled_input(updown):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  from tests.models.test_vae_parity import relative_error  # pylint: disable=import-outside-toplevel
  t = TINY
  state = random_state_dict(
      adm_layout(t['size'], t['channels'], t['mult'], t['blocks'], t['attention'], t['classes'], updown=updown,
                 in_channels=6), seed=0)
  reference = diffusers_unet(diffusers, updown, t['classes'], in_channels=6)
  reference.load_state_dict(
      {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in diffusers_state_dict(state, True, updown).items()},
      strict=True)
  params = params_from_state_dict(state, tiny_config(updown))

  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 3, t['size'], t['size'])).astype(np.float32)
  low_res = rng.uniform(-1, 1, (6, 3, LOW, LOW)).astype(np.float32)
  timesteps, labels = np.array([0, 1, 50, 250, 500, 999]), np.array([0, 3, 9, 9, 5, 7])
  with torch.no_grad():
    upsampled = torch.nn.functional.interpolate(torch.from_numpy(low_res), (t['size'], t['size']), mode='bilinear')
    expected = reference(torch.cat([torch.from_numpy(x), upsampled], 1), torch.from_numpy(timesteps),
                         class_labels=torch.from_numpy(labels)).sample.numpy()
  apply = build_model(tiny_config(updown)).apply
  run = lambda low: np.asarray(
      apply({'params': params}, x.transpose(0, 2, 3, 1), timesteps.astype(np.float32), y=labels, low_res=low.transpose(
          0, 2, 3, 1))).transpose(0, 3, 1, 2)
  error = relative_error(run(low_res), expected)
  print(f'relative error against the SuperResModel forward (updown={updown}): {error:.2e}')
  assert error < TOLERANCE
  assert relative_error(run(low_res[::-1]), expected) > 0.05  # the low-resolution input is read


@pytest.mark.parametrize('name', ['64_256', '128_512'])
def test_released_upsamplers_convert_to_the_model_tree(name):
  layout = upsampler_layout(name)
  assert (len(layout), sum(np.prod(s) for s in layout.values()), layout_digest(layout)) == RELEASED_LAYOUTS[name]
  config = validate_config(get_config(name))
  params = params_from_state_dict(zeros_state_dict(layout), config)
  assert import_weights.params_mismatch(params, abstract_params(config, build_model(config))) == ''
  assert (count_params(params), RELEASED_LAYOUTS[name][1]) == PARAMS[name]  # ours: + the null-label row


def _refusal(config, state):
  with pytest.raises(ValueError) as error:
    params_from_state_dict(state, config)
  return str(error.value)


def test_a_file_that_does_not_fit_is_refused_naming_the_fix():
  upsampler = zeros_state_dict(upsampler_layout('64_256'))
  message = _refusal(validate_config(adm_config('256')), upsampler)
  assert "the file is ADM's 64 -> 256 upsampler: --config=configs/adm_upsampler.py:64_256" in message
  assert 'the file takes 6 input channels: a super-resolution model (SuperResModel)' in message
  assert "the file is ADM's 64 -> 256 upsampler: --config=configs/adm_upsampler.py:64_256" in _refusal(
      validate_config(get_config('128_512')), upsampler)
  wrong_heads = get_config('64_256')
  wrong_heads.model.num_head_channels = 64
  assert "64 -> 256 upsampler (by its shapes), whose attention has 4 heads per layer and qkv order 'legacy'" in \
      _refusal(validate_config(wrong_heads), upsampler)
  base = zeros_state_dict(released_layout('256'))
  assert 'the file takes 3 input channels: not a super-resolution model: --config.model.low_res_size=0' in \
      _refusal(validate_config(get_config('64_256')), base)

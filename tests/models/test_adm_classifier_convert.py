"""models/adm_convert.py for ADM's noisy classifiers (guided-diffusion's EncoderUNetModel -> models/adm_classifier.py).

The reference: the trunk (time embedding, input blocks, middle block) through diffusers' UNet2DModel, loaded by the
mapping tests/models/test_adm_convert.py checks for the U-Net, and the head (GroupNorm, SiLU, AttentionPool2d or the mean
and a 1x1 conv) restated in torch from guided_diffusion/unet.py (AttentionPool2d, QKVAttention: the mean token
joins the pixel tokens, a position embedding is added, and one attention layer in the [q, k, v][head][channel]
order reads them; c_proj of the mean token's output is the logits). Random values in every tensor.
"""
import json
import math

import jax
import numpy as np
import pytest

from jobs import import_weights
from configs.adm_classifier import get_config
from configs.validate import validate_config
from models import build_model
from models.adm_convert import params_from_state_dict
from tests.models.test_adm_convert import (TINY, TOLERANCE, adm_layout, diffusers_state_dict, diffusers_unet,
                                           layout_digest, random_state_dict, zeros_state_dict)
from jobs.restore import restore_for_inference
from models.shapes import abstract_params
from training.state import count_params

# (key count, parameter count, sha256 of the sorted [key, shape] list as JSON, first 16 hex digits) of the state
# dicts of guided-diffusion's create_classifier with its README's CLASSIFIER_FLAGS (torch 2.13, meta device)
RELEASED_LAYOUTS = {
    64: (307, 65_438_568, '8a5b3ef9131c8767'), 128: (221, 42_568_040, '8edc1cef0fb66754'),
    256: (249, 54_096_360, '4a9fd0f6e6e407a1'), 512: (281, 54_448_360, '9fed76084c76e1e0')
}
CLASSES = 10
HEAD_CHANNELS = TINY['head_channels']


def classifier_layout(size, channels, mult, blocks, attention, classes, pool='attention', updown=True):
  """{key: shape} of guided-diffusion's EncoderUNetModel: the U-Net's time_embed, input_blocks, middle_block and
  out.0, then the head."""
  unet = adm_layout(size, channels, mult, blocks, attention, 0, updown=updown)
  shapes = {k: s for k, s in unet.items() if k.startswith(('time_embed.', 'input_blocks.', 'middle_block.'))}
  c = int(channels * mult[-1])
  shapes['out.0.weight'], shapes['out.0.bias'] = (c,), (c,)
  if pool == 'attention':
    shapes['out.2.positional_embedding'] = (c, (size >> (len(mult) - 1))**2 + 1)
    shapes.update({
        'out.2.qkv_proj.weight': (3 * c, c, 1), 'out.2.qkv_proj.bias': (3 * c,), 'out.2.c_proj.weight': (classes, c, 1),
        'out.2.c_proj.bias': (classes,)
    })
  else:
    shapes.update({'out.3.weight': (classes, c, 1, 1), 'out.3.bias': (classes,)})
  return shapes


def released_layout(resolution):
  mult = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4), 512: (0.5, 1, 1, 2, 2, 4, 4)}[resolution]
  return classifier_layout(resolution, 128, mult, 4 if resolution == 64 else 2, (32, 16, 8), 1000)


def tiny_config(pool='attention', updown=True, classes=CLASSES):
  """configs/adm_classifier.py cut to TINY, float32, XLA attention."""
  c = get_config('64')
  c.data.update(image_size=TINY['size'], num_classes=classes)
  c.model.update(base_channels=TINY['channels'], channel_mult=TINY['mult'], num_res_blocks=TINY['blocks'],
                 attn_resolutions=TINY['attention'], num_head_channels=HEAD_CHANNELS, resblock_updown=updown, pool=pool,
                 attention_impl=None)
  c.train.compute_dtype = 'float32'
  return validate_config(c)


def tiny_state(pool, updown, seed=0):
  """(the classifier's state dict, the U-Net state dict sharing its trunk, for the diffusers reference)."""
  t = TINY
  unet = random_state_dict(
      adm_layout(t['size'], t['channels'], t['mult'], t['blocks'], t['attention'], 0, updown=updown), seed)
  layout = classifier_layout(t['size'], t['channels'], t['mult'], t['blocks'], t['attention'], CLASSES, pool, updown)
  head = random_state_dict({k: s for k, s in layout.items() if k.startswith('out.')}, seed + 1)
  state = {k: unet[k] for k in layout if not k.startswith('out.')} | head
  assert set(state) == set(layout)
  return state, unet


def reference_logits(torch, unet_state, state, pool, updown, x, t):
  """diffusers' trunk, then guided-diffusion's head restated."""
  import diffusers  # pylint: disable=import-outside-toplevel
  f = torch.nn.functional
  trunk = diffusers_unet(diffusers, updown, 0)
  trunk.load_state_dict(
      {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in diffusers_state_dict(unet_state, True, updown).items()},
      strict=True)
  p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
  with torch.no_grad():
    emb = trunk.time_embedding(trunk.time_proj(t))
    h = trunk.conv_in(x)
    for block in trunk.down_blocks:
      h, _ = block(hidden_states=h, temb=emb)
    h = trunk.mid_block(h, emb)
    h = f.silu(f.group_norm(h, 32, p['out.0.weight'], p['out.0.bias'], eps=1e-5))
    if pool == 'adaptive':
      return f.conv2d(h.mean(dim=(2, 3), keepdim=True), p['out.3.weight'], p['out.3.bias']).flatten(1).numpy()
    b, c = h.shape[:2]
    tokens = h.reshape(b, c, -1)
    tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1) + p['out.2.positional_embedding'][None]
    q, k, v = f.conv1d(tokens, p['out.2.qkv_proj.weight'], p['out.2.qkv_proj.bias']).chunk(3, dim=1)
    heads, length = c // HEAD_CHANNELS, tokens.shape[-1]
    q, k, v = (a.reshape(b * heads, HEAD_CHANNELS, length) for a in (q, k, v))
    weights = torch.softmax(torch.einsum('bct,bcs->bts', q, k) / math.sqrt(HEAD_CHANNELS), dim=-1)
    attended = torch.einsum('bts,bcs->bct', weights, v).reshape(b, c, length)
    return f.conv1d(attended, p['out.2.c_proj.weight'], p['out.2.c_proj.bias'])[:, :, 0].numpy()


@pytest.mark.parametrize('pool, updown', [('attention', True), ('adaptive', False)],
                         ids=['attention_pool-resblock_updown', 'adaptive_pool-conv_resample'])
def test_matches_the_reference(pool, updown):
  torch = pytest.importorskip('torch')
  pytest.importorskip('diffusers')
  from tests.models.test_vae_parity import relative_error  # pylint: disable=import-outside-toplevel
  state, unet_state = tiny_state(pool, updown)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 3, TINY['size'], TINY['size'])).astype(np.float32)
  t = np.array([0, 1, 50, 250, 500, 999])
  expected = reference_logits(torch, unet_state, state, pool, updown, torch.from_numpy(x), torch.from_numpy(t))
  config = tiny_config(pool, updown)
  params = params_from_state_dict(state, config)
  apply = jax.jit(build_model(config).apply)
  logits = lambda p: np.asarray(apply({'params': p}, x.transpose(0, 2, 3, 1), t.astype(np.float32)))
  got = logits(params)
  assert got.shape == expected.shape == (6, CLASSES) and np.abs(expected).max() > 0.1
  error = relative_error(got, expected)
  print(f'relative error against the reference ({pool} pool, resblock_updown={updown}): {error:.2g}')
  assert error < TOLERANCE
  if pool == 'attention':  # the test sees the pool's layout: q and k swapped
    swapped = {**params, 'pool': {**params['pool'], 'q': params['pool']['k'], 'k': params['pool']['q']}}
    assert relative_error(logits(swapped), expected) > 0.01


@pytest.mark.parametrize('resolution', [64, 128, 256, 512])
def test_released_classifiers_convert_to_the_model_tree(resolution):
  layout = released_layout(resolution)
  assert (len(layout), sum(np.prod(s) for s in layout.values()), layout_digest(layout)) == \
      RELEASED_LAYOUTS[resolution]
  config = validate_config(get_config(str(resolution)))
  params = params_from_state_dict(zeros_state_dict(layout), config)
  assert import_weights.params_mismatch(params, abstract_params(config, build_model(config))) == ''
  assert count_params(params) == RELEASED_LAYOUTS[resolution][1]  # no null row: a classifier takes no labels


def _refusal(config, state):
  with pytest.raises(ValueError) as error:
    params_from_state_dict(state, config)
  return str(error.value)


def test_a_file_that_does_not_fit_is_refused_naming_the_fix():
  from tests.models.test_adm_convert import tiny_config as unet_config  # pylint: disable=import-outside-toplevel
  state, unet_state = tiny_state('attention', True)
  assert 'a guided-diffusion UNetModel (a diffusion model), the config a classifier: use ' \
         '--config=configs/adm_imagenet.py' in _refusal(tiny_config(), unet_state)
  assert 'an ADM noisy classifier (EncoderUNetModel), the config a U-Net: use --config=configs/adm_classifier.py' \
      in _refusal(unet_config('legacy', True, 0), state)
  assert '--config.data.num_classes=10' in _refusal(tiny_config(classes=5), state)
  assert '--config.model.pool=attention' in _refusal(tiny_config(pool='adaptive'), state)
  assert '--config.model.resblock_updown=True' in _refusal(tiny_config(updown=False), state)
  released_128 = zeros_state_dict(released_layout(128))
  assert "the file is ADM's 128x128 ImageNet classifier: --config=configs/adm_classifier.py:128" in _refusal(
      validate_config(get_config('256')), released_128)
  wrong_heads = get_config('128')
  wrong_heads.model.num_head_channels = 32
  assert "whose attention has 64 channels per head and qkv order 'legacy'" in _refusal(
      validate_config(wrong_heads), released_128)


def test_import_writes_a_workdir_that_restores_exactly(tmp_path):
  torch = pytest.importorskip('torch')
  state, _ = tiny_state('attention', True, seed=3)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / 'classifier.pt')
  config = tiny_config()
  workdir = str(tmp_path / 'run')
  import_weights.run_import_job(config, workdir, str(tmp_path / 'classifier.pt'))
  _, ema, step, _ = restore_for_inference(config, workdir)
  expected = params_from_state_dict(state, config)
  assert step == 0
  for a, b in zip(jax.tree.leaves(jax.device_get(ema)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  with open(f'{workdir}/config.json') as f:  # what sample.load_classifier reads
    assert json.load(f)['model']['name'] == 'adm_classifier'

"""models/adm_convert.py: openai/guided-diffusion (ADM) checkpoints -> our U-Net, against diffusers' UNet2DModel,
at the released models' full size, and through --mode=import.

State dicts here are written in guided-diffusion's key layout by `adm_layout` (which restates its UNetModel; for
the released models its key set and shapes are pinned by RELEASED_LAYOUTS, digests of the state dicts of
guided-diffusion's own models), with random values everywhere, the zero-initialised convs included. Relative error
is max|flax - torch| / max|torch| over the whole output.
"""
import hashlib
import json
import os

import jax
import numpy as np
import pytest

from jobs import import_weights
from configs.adm_imagenet import PARAMS, get_config
from configs.validate import validate_config
from models import build_model
from models.adm_convert import params_from_state_dict
from jobs.restore import restore_for_inference
from models.shapes import abstract_params
from training.state import count_params

TOLERANCE = 1e-5
# (key count, parameter count, sha256 of the sorted [key, shape] list as JSON, first 16 hex digits) of the state dicts
# of guided-diffusion's UNetModel from script_util.create_model with its README's flags (torch 2.13, meta device).
RELEASED_LAYOUTS = {
    '64': (541, 295_904_454, '4c7cc457c29f5bfe'), '128': (493, 421_529_606, '62f053bc80ca3c40'),
    '256': (567, 553_838_086, '6fcf52b21aeb4a35'), '256u': (566, 552_814_086, '85a06372a246b9bf'),
    '512': (645, 558_997_638, '27d57a5a09452227')
}
# Tiny ADM: 16x16, 32 channels x (1, 2, 3), 2 blocks per level, attention at 8x8 and 4x4 with 16 channels per
# head (4 and 6 heads), scale-shift norm, learned sigma.
TINY = {
    'size': 16, 'channels': 32, 'mult': (1, 2, 3), 'blocks': 2, 'attention': (8, 4), 'head_channels': 16, 'classes': 10
}
# Fewer tensors for the import test (orbax writes each of params, EMA and Adam's two moments as its own array).
SMALL = TINY | {'size': 8, 'mult': (1, 1), 'blocks': 1, 'attention': (4,)}


def adm_layout(size, channels, mult, blocks, attention, classes, learn_sigma=True, updown=True, in_channels=3):
  """{key: shape} of guided-diffusion's UNetModel (guided_diffusion/unet.py; scale-shift norm, image channels 3):
  the keys its state_dict() has for these options. `attention`: the resolutions (pixels) with attention;
  in_channels 6: SuperResModel's."""
  shapes, emb = {}, 4 * channels

  def add(name, *weight):
    shapes[f'{name}.weight'], shapes[f'{name}.bias'] = weight, weight[:1]

  def resblock(name, cin, cout):
    add(f'{name}.in_layers.0', cin)
    add(f'{name}.in_layers.2', cout, cin, 3, 3)
    add(f'{name}.emb_layers.1', 2 * cout, emb)
    add(f'{name}.out_layers.0', cout)
    add(f'{name}.out_layers.3', cout, cout, 3, 3)
    if cin != cout:
      add(f'{name}.skip_connection', cout, cin, 1, 1)

  def attention_block(name, c):
    add(f'{name}.norm', c)
    add(f'{name}.qkv', 3 * c, c, 1)
    add(f'{name}.proj_out', c, c, 1)

  def resample(name, c, conv):
    resblock(name, c, c) if updown else add(f'{name}.{conv}', c, c, 3, 3)

  add('time_embed.0', emb, channels)
  add('time_embed.2', emb, emb)
  if classes:
    shapes['label_emb.weight'] = (classes, emb)
  width = lambda m: int(m * channels)  # a level's channels (the 512x512 model starts at mult 0.5)
  ch = width(mult[0])
  add('input_blocks.0.0', ch, in_channels, 3, 3)
  skips, index = [ch], 1
  for level, m in enumerate(mult):
    for _ in range(blocks):
      resblock(f'input_blocks.{index}.0', ch, width(m))
      ch = width(m)
      if size >> level in attention:
        attention_block(f'input_blocks.{index}.1', ch)
      skips.append(ch)
      index += 1
    if level != len(mult) - 1:
      resample(f'input_blocks.{index}.0', ch, 'op')
      skips.append(ch)
      index += 1
  resblock('middle_block.0', ch, ch)
  attention_block('middle_block.1', ch)
  resblock('middle_block.2', ch, ch)
  index = 0
  for level, m in reversed(list(enumerate(mult))):
    for i in range(blocks + 1):
      resblock(f'output_blocks.{index}.0', ch + skips.pop(), width(m))
      ch, position = width(m), 1
      if size >> level in attention:
        attention_block(f'output_blocks.{index}.1', ch)
        position = 2
      if level and i == blocks:
        resample(f'output_blocks.{index}.{position}', ch, 'conv')
      index += 1
  add('out.0', ch)
  add('out.2', 6 if learn_sigma else 3, ch, 3, 3)
  return shapes


def released_layout(name):
  """adm_layout of a released model: '64', '128', '256', '256u' (unconditional) or '512'."""
  mult = {'64': (1, 2, 3, 4), '128': (1, 1, 2, 3, 4), '512': (0.5, 1, 1, 2, 2, 4, 4)}.get(name, (1, 1, 2, 2, 4, 4))
  size, channels = (64, 192) if name == '64' else (int(name.rstrip('u')), 256)
  return adm_layout(size, channels, mult, 3 if name == '64' else 2, (32, 16, 8), 0 if name.endswith('u') else 1000)


def released_config(name):
  c = get_config(name.rstrip('u'))
  if name.endswith('u'):
    c.data.num_classes = 0
  return validate_config(c)


def tiny_layout(updown, classes, t=TINY):
  return adm_layout(t['size'], t['channels'], t['mult'], t['blocks'], t['attention'], classes, updown=updown)


def tiny_config(qkv_order, updown, classes, t=TINY):
  """configs/adm_imagenet.py cut to TINY (or SMALL), float32, XLA attention. Import and restore read no data."""
  c = get_config('64')
  c.data.update(image_size=t['size'], num_classes=classes)
  c.model.update(base_channels=t['channels'], channel_mult=t['mult'], num_res_blocks=t['blocks'],
                 attn_resolutions=t['attention'], num_head_channels=t['head_channels'], resblock_updown=updown,
                 attention_impl=None)
  c.weights.qkv_order = qkv_order
  c.train.compute_dtype = 'float32'
  c.sample.update(num_samples=8, batch_size=8, num_steps=3)
  return validate_config(c)


def random_state_dict(layout, seed):
  """Weights ~ N(0, 1 / fan_in); GroupNorm scales 1 + N(0, 0.1^2); the other vectors ~ N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in layout.items():
    values = rng.standard_normal(shape)
    if len(shape) > 1:
      values /= np.sqrt(np.prod(shape[1:]))
    else:
      values = 0.1 * values + (key.endswith('.weight') and not key.startswith('label_emb'))
    state[key] = values.astype(np.float32)
  return state


def zeros_state_dict(layout):
  """A full-size state dict without the memory: zero views."""
  return {k: np.broadcast_to(np.float32(0), s) for k, s in layout.items()}


def layout_digest(layout):
  items = sorted((key, list(shape)) for key, shape in layout.items())
  return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def diffusers_state_dict(state, legacy, updown):
  """TINY in guided-diffusion's layout -> diffusers UNet2DModel keys: the mapping of diffusers'
  scripts/convert_consistency_to_diffusers.py (openai's ADM-based consistency models), which splits qkv as
  [q, k, v][head][channel]; legacy qkv rows ([head][q, k, v][channel]) are reordered to that first. Conv
  resamplers (not in that script) go to downsamplers.0.conv / upsamplers.0.conv."""
  t, out = TINY, {}

  def copy(new, old):
    out[f'{new}.weight'], out[f'{new}.bias'] = state[f'{old}.weight'], state[f'{old}.bias']

  def resnet(new, old):
    for ours, theirs in (('norm1', 'in_layers.0'), ('conv1', 'in_layers.2'), ('time_emb_proj', 'emb_layers.1'),
                         ('norm2', 'out_layers.0'), ('conv2', 'out_layers.3')):
      copy(f'{new}.{ours}', f'{old}.{theirs}')
    if f'{old}.skip_connection.weight' in state:
      copy(f'{new}.conv_shortcut', f'{old}.skip_connection')

  def attention(new, old):
    copy(f'{new}.group_norm', f'{old}.norm')
    weight, bias = state[f'{old}.qkv.weight'][..., 0], state[f'{old}.qkv.bias']
    c = weight.shape[1]
    if legacy:
      heads = c // t['head_channels']
      weight = weight.reshape(heads, 3, t['head_channels'], c).transpose(1, 0, 2, 3).reshape(3 * c, c)
      bias = bias.reshape(heads, 3, t['head_channels']).transpose(1, 0, 2).reshape(3 * c)
    for name, w, b in zip(('to_q', 'to_k', 'to_v'), np.split(weight, 3), np.split(bias, 3)):
      out[f'{new}.{name}.weight'], out[f'{new}.{name}.bias'] = w, b
    out[f'{new}.to_out.0.weight'] = state[f'{old}.proj_out.weight'][..., 0]
    out[f'{new}.to_out.0.bias'] = state[f'{old}.proj_out.bias']

  def resampler(new, old, conv):
    resnet(new, old) if updown else copy(f'{new}.conv', f'{old}.{conv}')

  copy('time_embedding.linear_1', 'time_embed.0')
  copy('time_embedding.linear_2', 'time_embed.2')
  if 'label_emb.weight' in state:
    out['class_embedding.weight'] = state['label_emb.weight']
  copy('conv_in', 'input_blocks.0.0')
  copy('conv_norm_out', 'out.0')
  copy('conv_out', 'out.2')
  attends = lambda level: t['size'] >> level in t['attention']
  levels, index = len(t['mult']), 1
  for level in range(levels):
    for j in range(t['blocks']):
      resnet(f'down_blocks.{level}.resnets.{j}', f'input_blocks.{index}.0')
      if attends(level):
        attention(f'down_blocks.{level}.attentions.{j}', f'input_blocks.{index}.1')
      index += 1
    if level != levels - 1:
      resampler(f'down_blocks.{level}.downsamplers.0', f'input_blocks.{index}.0', 'op')
      index += 1
  resnet('mid_block.resnets.0', 'middle_block.0')
  attention('mid_block.attentions.0', 'middle_block.1')
  resnet('mid_block.resnets.1', 'middle_block.2')
  index = 0
  for block, level in enumerate(reversed(range(levels))):
    for j in range(t['blocks'] + 1):
      resnet(f'up_blocks.{block}.resnets.{j}', f'output_blocks.{index}.0')
      if attends(level):
        attention(f'up_blocks.{block}.attentions.{j}', f'output_blocks.{index}.1')
      index += 1
    if level:
      resampler(f'up_blocks.{block}.upsamplers.0', f'output_blocks.{index - 1}.{2 if attends(level) else 1}', 'conv')
  return out


def diffusers_unet(diffusers, updown, classes, in_channels=3):
  t = TINY
  attends = [t['size'] >> level in t['attention'] for level in range(len(t['mult']))]
  plain_down, plain_up = ('ResnetDownsampleBlock2D', 'ResnetUpsampleBlock2D') if updown else ('DownBlock2D',
                                                                                              'UpBlock2D')
  return diffusers.UNet2DModel(
      sample_size=t['size'], in_channels=in_channels, out_channels=6, layers_per_block=t['blocks'],
      block_out_channels=tuple(m * t['channels'] for m in t['mult']), attention_head_dim=t['head_channels'],
      down_block_types=tuple('AttnDownBlock2D' if a else plain_down for a in attends), up_block_types=tuple(
          'AttnUpBlock2D' if a else plain_up for a in reversed(attends)), resnet_time_scale_shift='scale_shift',
      norm_num_groups=32, attn_norm_num_groups=32, norm_eps=1e-5, downsample_type='resnet' if updown else 'conv',
      upsample_type='resnet' if updown else 'conv', downsample_padding=1, num_class_embeds=classes or None).eval()


@pytest.mark.parametrize('qkv_order, updown, classes', [('legacy', True, 10), ('new', False, 0)],
                         ids=['legacy_qkv-resblock_updown-conditional', 'new_qkv-conv_resample-unconditional'])
def test_matches_diffusers_unet2d(qkv_order, updown, classes):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  from tests.models.test_vae_parity import relative_error  # pylint: disable=import-outside-toplevel
  state = random_state_dict(tiny_layout(updown, classes), seed=0)
  reference = diffusers_unet(diffusers, updown, classes)
  reference.load_state_dict(
      {
          k: torch.from_numpy(np.ascontiguousarray(v))
          for k, v in diffusers_state_dict(state, qkv_order == 'legacy', updown).items()
      }, strict=True)
  config = tiny_config(qkv_order, updown, classes)
  params = params_from_state_dict(state, config)

  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, 3, TINY['size'], TINY['size'])).astype(np.float32)
  timesteps = np.array([0, 1, 50, 250, 500, 999])
  labels = np.array([0, 3, 9, 9, 5, 7])
  cond = {'y': labels} if classes else {}
  with torch.no_grad():
    expected = reference(torch.from_numpy(x), torch.from_numpy(timesteps),
                         class_labels=torch.from_numpy(labels) if classes else None).sample.numpy()
  apply = jax.jit(build_model(config).apply)
  got = np.asarray(apply({'params': params}, x.transpose(0, 2, 3, 1), timesteps.astype(np.float32), **cond))
  got = got.transpose(0, 3, 1, 2)
  assert got.shape == expected.shape == (6, 6, TINY['size'], TINY['size'])  # learned sigma: 6 channels
  assert np.abs(expected).max() > 0.1 and np.abs(expected[:, 3:]).max() > 0.1  # not degenerate
  errors = {
      'all': relative_error(got, expected), 'prediction': relative_error(got[:, :3], expected[:, :3]),
      'variance values': relative_error(got[:, 3:], expected[:, 3:])
  }
  print(f'relative errors against diffusers UNet2DModel ({qkv_order} qkv, updown={updown}): {errors}')
  assert max(errors.values()) < TOLERANCE, errors
  if classes:  # the label matters, and the null row the converter adds is zeros
    other = np.asarray(
        apply({'params': params}, x.transpose(0, 2, 3, 1), timesteps.astype(np.float32), y=(labels + 1) % classes))
    assert np.abs(other.transpose(0, 3, 1, 2) - expected).max() > 1e-3
    assert not params['label_emb']['embedding_table']['embedding'][classes].any()


@pytest.mark.parametrize('name', ['64', '128', '256', '256u', '512'])
def test_released_models_convert_to_the_model_tree(name):
  layout = released_layout(name)
  keys, count, digest = RELEASED_LAYOUTS[name]
  assert (len(layout), sum(np.prod(s) for s in layout.values()), layout_digest(layout)) == (keys, count, digest)
  config = released_config(name)
  params = params_from_state_dict(zeros_state_dict(layout), config)
  assert import_weights.params_mismatch(params, abstract_params(config, build_model(config))) == ''
  if name == '256u':
    assert count_params(params) == count
  else:  # ours have the null-label row too: 4 x channels more
    assert (count_params(params), count) == PARAMS[int(name)]


@pytest.mark.parametrize('arg, schedule, heads, qkv_order, dropout', [('64', 'cosine', (64, 4), 'new', 0.1),
                                                                      ('128', 'linear', (-1, 4), 'legacy', 0.0),
                                                                      (None, 'linear', (64, 4), 'legacy', 0.0),
                                                                      ('512', 'linear', (64, 4), 'legacy', 0.0)])
def test_config_has_what_the_shapes_do_not_show(arg, schedule, heads, qkv_order, dropout):
  """The README's flags that leave no trace in the weights (heads, qkv order, schedule, dropout), and ADM's
  sampler: 250 respaced DDPM steps with the learned variances, clipped x0, no guidance."""
  c = validate_config(get_config(arg))
  assert (c.diffusion.schedule, (c.model.num_head_channels, c.model.num_heads), c.weights.qkv_order,
          c.model.dropout) == (schedule, heads, qkv_order, dropout)
  assert c.diffusion.learn_sigma and c.diffusion.objective == 'eps' and c.diffusion.num_timesteps == 1000
  assert (c.sample.sampler, c.sample.num_steps, c.sample.spacing, c.sample.clip_denoised,
          c.sample.guidance_scale) == ('ddpm', 250, 'linspace', True, 1.0)
  with pytest.raises(ValueError, match=r'released ADM ImageNet models are 64, 128, 256 and 512 pixels'):
    get_config('1024')


def _without(state, key):
  return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    'config_name, file_name, change, message', [
        ('256', '128', None, r'missing keys: .*Likely cause: the file is ADM\'s 128x128 ImageNet model: '
         r'--config=configs/adm_imagenet\.py:128'),
        ('256', '512', None, r'Likely cause: the file is ADM\'s 512x512 ImageNet model: '
         r'--config=configs/adm_imagenet\.py:512'),
        ('256', '256', 'drop', r'the weights do not fit .*: missing keys: output_blocks\.17\.0\.out_layers\.3\.bias$'),
        ('256', '256u', None, r'missing keys: label_emb\.weight.*the file has 0 classes \(no label_emb\.weight: '
         r'unconditional\), the config 1000: --config\.data\.num_classes=0'),
        ('256u', '256', None, r'unexpected keys: label_emb\.weight.*--config\.data\.num_classes=1000'),
        ('128', '128', 'no_sigma', r'misshaped keys: out\.2\.bias \(3,\) \(expected \(6,\)\), out\.2\.weight .*'
         r'--config\.diffusion\.learn_sigma=False'),
        ('64', '64', 'qkv', r'ADM\'s 64x64 ImageNet model \(by its shapes\), whose attention has 64 channels per head '
         r"and qkv order 'new'; .*weights\.qkv_order='legacy'.*configs/adm_imagenet\.py:64"),
    ], ids=[
        '128_into_256', '512_into_256', 'missing_key', 'unconditional_into_conditional',
        'conditional_into_unconditional', 'no_learn_sigma', 'wrong_qkv_order'
    ])
def test_a_file_that_does_not_fit_is_refused_naming_the_fix(config_name, file_name, change, message):
  config, layout = released_config(config_name), released_layout(file_name)
  if change == 'no_sigma':
    layout |= {'out.2.weight': (3, 256, 3, 3), 'out.2.bias': (3,)}
  state = zeros_state_dict(layout)
  if change == 'drop':
    state = _without(state, 'output_blocks.17.0.out_layers.3.bias')
  if change == 'qkv':
    config.weights.qkv_order = 'legacy'
  with pytest.raises(ValueError, match=message):
    params_from_state_dict(state, config)


def test_import_torch_file_restores_exactly_and_samples(tmp_path):
  torch = pytest.importorskip('torch')
  from jobs import sample  # pylint: disable=import-outside-toplevel
  config = tiny_config('legacy', True, 10, SMALL)
  state = random_state_dict(tiny_layout(True, 10, SMALL), seed=2)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / 'adm_tiny.pt')
  torch.save({k: torch.from_numpy(v) for k, v in _without(state, 'out.2.bias').items()}, tmp_path / 'broken.pt')
  with pytest.raises(ValueError, match=r'missing keys: out\.2\.bias'):
    import_weights.run_import_job(config, str(tmp_path / 'never'), str(tmp_path / 'broken.pt'))
  assert not os.path.exists(tmp_path / 'never')  # checked before anything is written
  workdir = str(tmp_path / 'run')
  import_weights.run_import_job(config, workdir, str(tmp_path / 'adm_tiny.pt'))
  _, ema, step, _ = restore_for_inference(config, workdir)
  with open(f'{workdir}/config.json') as f:  # what a classifier-guided sampler reads back (sample.load_classifier)
    assert json.load(f)['model']['base_channels'] == SMALL['channels']
  expected = params_from_state_dict(state, config)
  assert step == 0 and jax.tree.structure(ema) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(jax.device_get(ema)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  sample.run_sample_job(config, workdir)
  with np.load(f'{workdir}/samples.npz') as samples:
    assert samples['arr_0'].shape == (8, SMALL['size'], SMALL['size'], 3) and samples['arr_0'].dtype == np.uint8

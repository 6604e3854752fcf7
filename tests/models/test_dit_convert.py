"""models/dit_convert.py: facebookresearch/DiT checkpoints -> our DiT, against diffusers' DiT and through --mode=import.

The state dicts here are written in the original layout from DiT's models.py (`original_layout`), with random
values everywhere, the zero-initialised adaLN and output layers included. Relative error is
max|flax - torch| / max|torch| over the whole output.
"""
import argparse
import os

import jax
import numpy as np
import pytest

from jobs import import_weights
from configs.validate import validate_config
from configs.dit import dit_config
from models import build_model
from models.dit import sincos_pos_embed_2d
from models.dit_convert import params_from_state_dict
from jobs.restore import restore_for_inference
from models.shapes import abstract_params
from training.state import count_params

TINY = {'depth': 2, 'hidden': 96, 'heads': 4, 'patch': 2, 'channels': 4, 'classes': 10, 'size': 8}
XL2_PARAMS = 674_834_720  # ours; DiT's train.py counts its pos_embed buffer too: 675,129,632 at 256x256
TOLERANCE = 1e-5


def original_layout(depth, hidden, patch, channels, classes, grid, learn_sigma=True, mlp_ratio=4):
  """{key: shape} of a facebookresearch/DiT state dict (models.py with timm's PatchEmbed, Attention and Mlp)."""
  out = patch * patch * channels * (2 if learn_sigma else 1)
  shapes = {
      'x_embedder.proj.weight': (hidden, channels, patch, patch), 'x_embedder.proj.bias': (hidden,), 'pos_embed':
          (1, grid * grid, hidden), 't_embedder.mlp.0.weight': (hidden, 256), 't_embedder.mlp.0.bias': (hidden,),
      't_embedder.mlp.2.weight': (hidden, hidden), 't_embedder.mlp.2.bias': (hidden,),
      'y_embedder.embedding_table.weight': (classes + 1, hidden), 'final_layer.adaLN_modulation.1.weight':
          (2 * hidden, hidden), 'final_layer.adaLN_modulation.1.bias': (2 * hidden,), 'final_layer.linear.weight':
              (out, hidden), 'final_layer.linear.bias': (out,)
  }
  mlp = mlp_ratio * hidden
  layers = {
      'adaLN_modulation.1': (6 * hidden, hidden), 'attn.qkv': (3 * hidden, hidden), 'attn.proj': (hidden, hidden),
      'mlp.fc1': (mlp, hidden), 'mlp.fc2': (hidden, mlp)
  }
  for i in range(depth):
    for name, (n_out, n_in) in layers.items():
      shapes[f'blocks.{i}.{name}.weight'] = (n_out, n_in)
      shapes[f'blocks.{i}.{name}.bias'] = (n_out,)
  return shapes


def tiny_layout():
  t = TINY
  return original_layout(t['depth'], t['hidden'], t['patch'], t['channels'], t['classes'], t['size'] // t['patch'])


def dit_pos_embed(layout):
  _, tokens, hidden = layout['pos_embed']
  return sincos_pos_embed_2d(hidden, int(np.sqrt(tokens)))[None]


def random_state_dict(layout, seed):
  """Weights ~ N(0, 1 / fan_in), biases ~ N(0, 0.1^2); pos_embed is DiT's (ours, checked by the parity test)."""
  rng = np.random.default_rng(seed)
  scale = lambda shape: 1 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1
  state = {k: (scale(s) * rng.standard_normal(s)).astype(np.float32) for k, s in layout.items()}
  return state | {'pos_embed': dit_pos_embed(layout)}


def zeros_state_dict(layout):
  """A full-size state dict without the memory: zero views; pos_embed the real one."""
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in layout.items()}
  return state | {'pos_embed': dit_pos_embed(layout)}


def tiny_dit_config():
  """configs/dit.py's DiT-S/2 (4 latent channels, learned sigma, linear schedule) cut to TINY, in float32.
  Import and restore read no data."""
  c = dit_config('S', TINY['patch'])
  c.model.update(depth=TINY['depth'], hidden_size=TINY['hidden'], num_heads=TINY['heads'])
  c.data.update(image_size=TINY['size'], channels=TINY['channels'], num_classes=TINY['classes'])
  c.train.compute_dtype = 'float32'
  return validate_config(c)


def diffusers_state_dict(state, depth):
  """The key mapping of diffusers' scripts/convert_dit_to_diffusers.py: each block gets its own copy of the shared
  timestep and class embedders, qkv is split into to_q, to_k, to_v; pos_embed is left out (diffusers computes it)."""
  out = {'pos_embed.proj.weight': state['x_embedder.proj.weight'], 'pos_embed.proj.bias': state['x_embedder.proj.bias']}
  for leaf in ('weight', 'bias'):
    out[f'proj_out_1.{leaf}'] = state[f'final_layer.adaLN_modulation.1.{leaf}']
    out[f'proj_out_2.{leaf}'] = state[f'final_layer.linear.{leaf}']
    for i in range(depth):
      block, ours = f'transformer_blocks.{i}.', f'blocks.{i}.'
      out[f'{block}norm1.emb.timestep_embedder.linear_1.{leaf}'] = state[f't_embedder.mlp.0.{leaf}']
      out[f'{block}norm1.emb.timestep_embedder.linear_2.{leaf}'] = state[f't_embedder.mlp.2.{leaf}']
      out[f'{block}norm1.linear.{leaf}'] = state[f'{ours}adaLN_modulation.1.{leaf}']
      for name, part in zip(('to_q', 'to_k', 'to_v'), np.split(state[f'{ours}attn.qkv.{leaf}'], 3)):
        out[f'{block}attn1.{name}.{leaf}'] = part
      out[f'{block}attn1.to_out.0.{leaf}'] = state[f'{ours}attn.proj.{leaf}']
      out[f'{block}ff.net.0.proj.{leaf}'] = state[f'{ours}mlp.fc1.{leaf}']
      out[f'{block}ff.net.2.{leaf}'] = state[f'{ours}mlp.fc2.{leaf}']
  for i in range(depth):
    out[f'transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight'] = \
        state['y_embedder.embedding_table.weight']
  return out


def test_matches_diffusers_dit():
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  from tests.models.test_vae_parity import relative_error  # pylint: disable=import-outside-toplevel
  t = TINY
  reference = diffusers.DiTTransformer2DModel(
      num_attention_heads=t['heads'], attention_head_dim=t['hidden'] // t['heads'], in_channels=t['channels'],
      out_channels=2 * t['channels'], num_layers=t['depth'], sample_size=t['size'], patch_size=t['patch'],
      num_embeds_ada_norm=t['classes'], norm_eps=1e-6).eval()  # DiT's LayerNorms: eps 1e-6 (diffusers' default 1e-5)
  for block in reference.transformer_blocks:
    # DiT's timestep frequencies are exp(-ln(10^4) i / 128); diffusers' DiT port divides by 127 (shift 1)
    block.norm1.emb.time_proj.downscale_freq_shift = 0
  state = random_state_dict(tiny_layout(), seed=0)
  state['pos_embed'] = reference.pos_embed.pos_embed.numpy()  # diffusers' own sin-cos table: our order must match
  reference.load_state_dict(
      {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in diffusers_state_dict(state, t['depth']).items()},
      strict=True)
  config = tiny_dit_config()
  params = params_from_state_dict(state, config)

  rng = np.random.default_rng(1)
  x = rng.standard_normal((6, t['channels'], t['size'], t['size'])).astype(np.float32)
  timesteps = np.array([0, 1, 50, 250, 500, 999])
  labels = np.array([0, 3, 9, t['classes'], t['classes'], 7])  # classes: the null label
  with torch.no_grad():
    expected = reference(torch.from_numpy(x), timestep=torch.from_numpy(timesteps),
                         class_labels=torch.from_numpy(labels)).sample.numpy()
  got = jax.jit(build_model(config).apply)({'params': params}, x.transpose(0, 2, 3, 1), timesteps.astype(np.float32),
                                           labels)
  got = np.asarray(got).transpose(0, 3, 1, 2)
  assert got.shape == expected.shape == (6, 2 * t['channels'], t['size'], t['size'])  # learned sigma: 2C out
  assert np.abs(expected).max() > 0.1 and np.abs(expected[:, t['channels']:]).max() > 0.1  # not degenerate
  errors = {
      'all': relative_error(got, expected), 'prediction': relative_error(got[:, :t['channels']],
                                                                         expected[:, :t['channels']]),
      'variance values': relative_error(got[:, t['channels']:], expected[:, t['channels']:])
  }
  print(f'relative errors against diffusers DiTTransformer2DModel: {errors}')
  assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize('image_size', [32, 64], ids=['256px', '512px'])
def test_full_size_xl2_converts_to_the_model_tree(image_size):
  config = dit_config('XL', 2)
  config.data.image_size = image_size
  layout = original_layout(28, 1152, 2, 4, 1000, image_size // 2)
  params = params_from_state_dict(zeros_state_dict(layout), config)
  assert import_weights.params_mismatch(params, abstract_params(config, build_model(config))) == ''
  assert count_params(params) == XL2_PARAMS
  assert sum(np.prod(s) for s in layout.values()) == XL2_PARAMS + (image_size // 2)**2 * 1152  # + pos_embed


def _xl2_with(**changes):
  args = {'depth': 28, 'hidden': 1152, 'patch': 2, 'channels': 4, 'classes': 1000, 'grid': 16} | changes
  return zeros_state_dict(original_layout(**args))


def _without(state, key):
  return {k: v for k, v in state.items() if k != key}


def _grid_transposed(state):
  """pos_embed with rows and columns of the token grid swapped: the order mistake the check exists for."""
  _, tokens, hidden = state['pos_embed'].shape
  grid = int(np.sqrt(tokens))
  return state | {'pos_embed': state['pos_embed'].reshape(grid, grid, hidden).transpose(1, 0, 2).reshape(1, -1, hidden)}


@pytest.mark.parametrize('changes, message', [
    ({'depth': 12, 'hidden': 768}, (r'missing keys: blocks\.12\..*hidden_size=1152 but the file has 768.*'
                                    r'DiT-B/2: --config=configs/dit_b\.py:2')),
    ({'patch': 4, 'grid': 8}, (r'misshaped keys: .*x_embedder\.proj\.weight \(1152, 4, 4, 4\) \(expected '
                               r'\(1152, 4, 2, 2\)\).*configs/dit_xl\.py:4')),
    ({'grid': 32}, r'misshaped keys: pos_embed \(1, 1024, 1152\).*--config\.data\.image_size=64'),
    ({'classes': 10}, r'y_embedder\.embedding_table\.weight \(11, 1152\).*--config\.data\.num_classes=10'),
    ({'learn_sigma': False}, r'final_layer\.linear\.weight \(16, 1152\).*--config\.diffusion\.learn_sigma=False'),
], ids=['dit_b', 'patch_4', '512_into_256', 'classes', 'no_learn_sigma'])
def test_another_variant_is_refused_naming_the_fix(changes, message):
  with pytest.raises(ValueError, match=message):
    params_from_state_dict(_xl2_with(**changes), dit_config('XL', 2))


def test_missing_key_wrong_pos_embed_and_head_count_are_refused():
  config, state = dit_config('XL', 2), _xl2_with()
  with pytest.raises(ValueError, match=r'missing keys: blocks\.27\.mlp\.fc2\.bias$'):
    params_from_state_dict(_without(state, 'blocks.27.mlp.fc2.bias'), config)
  with pytest.raises(ValueError,
                     match=r'pos_embed of the file differs from .*sincos_pos_embed_2d\(1152, 16\) by up to'):
    params_from_state_dict(_grid_transposed(state), config)
  config.model.num_heads = 12
  with pytest.raises(ValueError, match='DiT-XL has 16 attention heads.*--config.model.num_heads=16'):
    params_from_state_dict(state, config)


def _files_under(directory):
  return {
      os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns for root, _, names in os.walk(directory)
      for name in names
  }


def assert_imported(config, workdir, expected):
  """The workdir's step-0 checkpoint holds `expected` as its EMA params, bit for bit."""
  _, ema, step, _ = restore_for_inference(config, workdir)
  assert step == 0
  assert jax.tree.structure(ema) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(jax.device_get(ema)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_import_npz_restores_exactly_and_refuses_a_second_import(tmp_path):
  config = tiny_dit_config()
  state = random_state_dict(tiny_layout(), seed=2)
  np.savez(tmp_path / 'dit.npz', **state)
  np.savez(tmp_path / 'broken.npz', **_without(state, 'final_layer.linear.bias'))
  with pytest.raises(ValueError, match=r'missing keys: final_layer\.linear\.bias'):
    import_weights.run_import_job(config, str(tmp_path / 'never'), str(tmp_path / 'broken.npz'))
  assert not os.path.exists(tmp_path / 'never')  # checked before anything is written

  workdir = str(tmp_path / 'run')
  import_weights.run_import_job(config, workdir, str(tmp_path / 'dit.npz'))
  assert_imported(config, workdir, params_from_state_dict(state, config))
  before = _files_under(workdir + '/checkpoints')
  with pytest.raises(FileExistsError, match=r'already holds the checkpoints of steps \[0\].*nothing was changed'):
    import_weights.run_import_job(config, workdir, str(tmp_path / 'dit.npz'))
  assert _files_under(workdir + '/checkpoints') == before


def test_import_torch_file_and_training_checkpoint_ema(tmp_path):
  torch = pytest.importorskip('torch')
  config = tiny_dit_config()
  as_torch = lambda state: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
  released, ema, model = (random_state_dict(tiny_layout(), seed) for seed in (3, 4, 5))
  torch.save(as_torch(released), tmp_path / 'DiT-tiny.pt')
  import_weights.run_import_job(config, str(tmp_path / 'released'), str(tmp_path / 'DiT-tiny.pt'))
  assert_imported(config, str(tmp_path / 'released'), params_from_state_dict(released, config))

  weight = torch.nn.Parameter(torch.zeros(3))
  optimizer = torch.optim.AdamW([weight], lr=1e-4, weight_decay=0)
  weight.grad = torch.ones(3)
  optimizer.step()
  torch.save(
      {
          'model': as_torch(model),
          'ema': as_torch(ema),
          'opt': optimizer.state_dict(),  # DiT's train.py
          'args': argparse.Namespace(model='DiT-S/2', image_size=64, num_classes=10)
      },
      tmp_path / '0050000.pt')
  import_weights.run_import_job(config, str(tmp_path / 'trained'), str(tmp_path / '0050000.pt'))
  assert_imported(config, str(tmp_path / 'trained'), params_from_state_dict(ema, config))

"""DINOv2 without PyTorch: parameter counts of the published models (abstract params, nothing allocated), the
converter's errors on files that do not fit, the .msgpack round trip, and the native-grid position table."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from models import dinov2_convert, weight_files
from models.dinov2 import (DINOV2_VARIANTS, DINOv2, abstract_params, dinov2_from_name, dinov2_inputs, load_dinov2,
                           position_embeddings, save_dinov2)

TINY = DINOv2(width=64, depth=2, num_heads=1, mlp_dim=256, position_grid=4)  # 56 px at the table's grid


def count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def closed_form_count(width, depth, mlp_dim, swiglu, registers):
  """Patch conv, CLS, 1 + 37 * 37 positions, registers; per block 2 norms, qkv, proj, 2 layer scales, the FFN;
  the final norm."""
  ffn = (width * 2 * mlp_dim + 2 * mlp_dim if swiglu else width * mlp_dim + mlp_dim) + mlp_dim * width + width
  block = 4 * width + (3 * width * width + 3 * width) + (width * width + width) + 2 * width + ffn
  return (14 * 14 * 3 * width + width) + width * (1 + 1 + 37 * 37 + registers) + depth * block + 2 * width


# dinov2's README: ViT-S/14 21 M, ViT-B/14 86 M, ViT-L/14 300 M, ViT-g/14 1,100 M parameters (rounded).
@pytest.mark.parametrize('name, published', [('dinov2_vits14', 21e6), ('dinov2_vitb14', 86e6), ('dinov2_vitl14', 300e6),
                                             ('dinov2_vitg14', 1100e6), ('dinov2_vitb14_reg', 86e6)])
def test_parameter_counts_match_the_published_ones(name, published):
  fields = DINOV2_VARIANTS[name]
  n = count(abstract_params(dinov2_from_name(name)))
  assert n == closed_form_count(fields['width'], fields['depth'], fields['mlp_dim'], fields['swiglu'],
                                fields['num_register_tokens'])
  assert abs(n / published - 1) < 0.06


def test_giant_uses_swiglu_of_dinov2_width():
  params = flatten_dict(abstract_params(dinov2_from_name('dinov2_vitg14')))
  assert params[('blocks_0', 'mlp', 'w12', 'kernel')].shape == (1536, 8192)
  assert params[('blocks_0', 'mlp', 'w3', 'kernel')].shape == (4096, 1536)
  assert ('blocks_39', 'ls2') in params and ('blocks_40', 'ls2') not in params


def hub_state_dict(module):
  """A torch-hub-layout state dict of random numbers with the module's shapes (and the mask token)."""
  rng = np.random.default_rng(0)
  shapes = flatten_dict(abstract_params(module, 56))
  state = {
      dinov2_convert.hub_name(path): rng.normal(size=weight_files.torch_shape(path, leaf.shape)).astype(np.float32)
      for path, leaf in shapes.items()
  }
  return {**state, 'mask_token': np.zeros((1, module.width), np.float32)}


def test_hub_layout_converts_to_the_module_it_came_from(tmp_path):
  state = hub_state_dict(TINY)
  module, params = dinov2_convert.convert_state_dict(state, num_heads=1)
  assert module == TINY.clone(interpolate_offset=0.1)  # torch hub's resampling without registers
  np.testing.assert_array_equal(params['blocks_1']['attn']['qkv']['kernel'], state['blocks.1.attn.qkv.weight'].T)
  np.testing.assert_array_equal(params['patch_embed']['kernel'], state['patch_embed.proj.weight'].transpose(2, 3, 1, 0))
  save_dinov2(str(tmp_path / 't.msgpack'), module, params)
  loaded, loaded_params = load_dinov2(str(tmp_path / 't.msgpack'), interpolate_offset=0.0)
  assert loaded == TINY
  jax.tree.map(np.testing.assert_array_equal, loaded_params, params)


@pytest.mark.parametrize('edit, message', [
    (lambda s: s.pop('blocks.1.ls2.gamma'), 'missing keys: blocks.1.ls2.gamma'),
    (lambda s: s.update({'head.weight': np.zeros((3, 64))}), 'unexpected keys: head.weight'),
    (lambda s: s.update({'norm.bias': np.zeros(65)}), 'misshaped keys: norm.bias (65,) (expected (64,))'),
    (lambda s: s.pop('cls_token'), 'key cls_token is missing'),
])
def test_a_file_that_does_not_fit_names_the_problem(tmp_path, edit, message):
  state = hub_state_dict(TINY)
  edit(state)
  np.savez(tmp_path / 'wrong.npz', **state)
  with pytest.raises((ValueError, KeyError), match=message.replace('(', r'\(').replace(')', r'\)')):
    dinov2_convert.convert_file(str(tmp_path / 'wrong.npz'), str(tmp_path / 'out.msgpack'), num_heads=1)


def test_missing_files_name_where_to_get_them(tmp_path):
  with pytest.raises(FileNotFoundError, match='dinov2_vitb14_pretrain.pth'):
    dinov2_convert.convert_file(str(tmp_path / 'nothing.pth'), str(tmp_path / 'out.msgpack'))
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    dinov2_convert.convert_file(str(tmp_path), str(tmp_path / 'out.msgpack'))


def test_loading_params_of_another_architecture_names_the_keys(tmp_path):
  params = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract_params(TINY, 56))
  save_dinov2(str(tmp_path / 'x.msgpack'), TINY.clone(depth=3), params)
  with pytest.raises(ValueError, match='missing keys: blocks_2/attn/proj/bias'):
    load_dinov2(str(tmp_path / 'x.msgpack'))


def test_native_grid_keeps_the_table_and_outputs_have_token_shapes():
  table = jnp.arange(17 * 3, dtype=jnp.float32).reshape(1, 17, 3)
  assert position_embeddings(table, 4, 4, offset=0.1) is table  # the references skip resampling at M x M
  module = TINY.clone(num_register_tokens=4)
  pixels = dinov2_inputs(jnp.zeros((2, 56, 70, 3)), 56)
  assert pixels.shape == (2, 56, 56, 3)
  np.testing.assert_allclose(pixels[0, 0, 0], (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                             rtol=1e-6)
  outputs = jax.eval_shape(lambda: module.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 56, 70, 3)))[0])
  assert outputs['patch_tokens'].shape == (2, 4 * 5, 64) and outputs['cls'].shape == (2, 64)

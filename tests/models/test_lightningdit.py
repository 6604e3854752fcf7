"""LightningDiT's block options of the DiT (config.model.mlp, norm, rope, qk_norm) against LightningDiT's own code.

Reference: github.com/hustvl/LightningDiT at commit 2725fed42a14898744433809949834e26957bcdd (models/lightningdit.py,
rmsnorm.py, swiglu_ffn.py, pos_embed.py), run on CPU with torch 2.13 by tests/models/lightningdit_goldens.py on the
inputs and weights it defines; GOLDENS are its output: each case's output shape and `summary` (sum, sum of squares,
8 entries). Each case loads the same weights into our layer and must reproduce them to float32 rounding.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.dit import dit_config
from configs.validate import validate_config
from input_pipeline import StepBatcher, create_source
from models import build_model
from models.dit import LIGHTNINGDIT_VARIANTS, DiT, DiTBlock, adaln_norm
from models.layers import MultiHeadSelfAttention, SwiGLU, apply_rope, rope_2d
from models.shapes import abstract_params
from tests.models.lightningdit_goldens import (GRID, HEAD_DIM, HEADS, HIDDEN, TINY_MODEL, case_inputs, reference_weight,
                                               summary)
from tests.tiny import tiny_unet_config
from training import sharding as sharding_lib
from training import step as training_step
from training.state import count_params, create_optimizer, create_state, state_shardings

GOLDENS = {  # python tests/models/lightningdit_goldens.py /path/to/LightningDiT
    'rope': ((2, 4, 16, 16), [18.1458, 2020.66557, 0.968119, 0.551014, 1.384207, 0.37382, -0.572675, 0.108811,
                              0.455048, -1.392549]),
    'rope_xl': ((1, 1, 256, 72), [96.88246, 18353.71265, 1.469609, 1.157457, 2.132008, -0.875588, -1.145299,
                                  -1.883206, 0.120111, -0.38904]),
    'rmsnorm': ((2, 16, 64), [14.34905, 2236.78653, -0.552735, 0.36811, 0.651953, 1.861876, 2.568044, -0.276968,
                              2.64743, -1.17287]),
    'swiglu': ((2, 16, 64), [39.89931, 39628.36033, 3.883032, 2.574237, 1.373711, -2.959352, 9.874158, 0.923864,
                             1.878123, -7.323365]),
    'attention': ((2, 16, 64), [107.7982, 2566.42579, 1.824736, 0.278773, 2.195851, 0.181655, -0.580913, 0.021182,
                                -0.593118, 0.651888]),
    'block': ((2, 16, 64), [-515.73105, 642965.0119, 0.561054, -11.587982, 1.628032, 7.255466, -14.184605, 6.711151,
                            68.406891, -10.66289]),
    'model': ((2, 4, 8, 8), [513.31624, 18464.514, 8.544206, 6.214189, -11.510256, 3.742048, 9.641451, 2.772447,
                             -0.257204, 15.563742]),
}

# LightningDiT's trainable parameters, counted by building its torch model at the commit above (models/lightningdit.py
# with use_swiglu, use_rope, use_rmsnorm, 16x16x32 VA-VAE latents, 1000 classes: sum of its parameters with
# requires_grad, so not the fixed pos_embed).
LIGHTNINGDIT_PARAMS = {('XL', 1): 674_961_824, ('XL', 2): 675_183_104, ('B', 1): 130_359_584, ('B', 2): 130_507_136}

_TORCH_MODULES = {
    'x_embedder': 'x_embedder.proj', 'mlp_0': 'mlp.0', 'mlp_2': 'mlp.2', 'adaLN_modulation': 'adaLN_modulation.1'
}
_TORCH_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}


def torch_key(case, path):
  """('blocks_0', 'attn', 'q_norm', 'scale') of case 'model' -> 'model.blocks.0.attn.q_norm.weight'."""
  modules = [_TORCH_MODULES.get(name, name.replace('blocks_', 'blocks.')) for name in path[:-1]]
  return '.'.join([case, *modules, _TORCH_LEAVES[path[-1]]])


def reference_params(case, module, *args):
  """`module`'s params holding the reference weights of `case` (torch Linear [out, in] and Conv2d OIHW layouts
  turned into Flax's)."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)['params']

  def value(path, leaf):
    names = tuple(k.key for k in path)
    shape = leaf.shape
    if names[-1] == 'kernel':
      shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
    w = reference_weight(torch_key(case, names), shape)
    if names[-1] == 'kernel':
      w = w.T if w.ndim == 2 else w.transpose(2, 3, 1, 0)
    return jnp.asarray(w)

  return jax.tree_util.tree_map_with_path(value, shapes)


def ours(case):
  """Our layer's output for `case`, in the reference's layout."""
  inputs = {k: jnp.asarray(v) for k, v in case_inputs(case).items()}
  heads_last = lambda y: y.transpose(0, 2, 1, 3)  # [B, H, L, D] <-> [B, L, H, D]
  if case in ('rope', 'rope_xl'):
    head_dim, grid = (HEAD_DIM, GRID) if case == 'rope' else (72, 16)
    cos, sin = rope_2d(head_dim, grid, grid)
    return heads_last(apply_rope(heads_last(inputs['x']), jnp.asarray(cos), jnp.asarray(sin)))
  rope = tuple(map(jnp.asarray, rope_2d(HEAD_DIM, GRID, GRID)))
  if case == 'model':
    module = DiT(image_size=8, channels=4, num_classes=10, patch_size=2, depth=TINY_MODEL['depth'], hidden_size=HIDDEN,
                 num_heads=HEADS, mlp='swiglu', norm='rms', rope=True, qk_norm=True)
    args = (inputs['x'].transpose(0, 2, 3, 1), inputs['t'], inputs['y'])
    return module.apply({'params': reference_params(case, module, *args)}, *args).transpose(0, 3, 1, 2)
  x = inputs['x']
  if case == 'rmsnorm':
    module, args = adaln_norm('rms', jnp.float32, None), (x,)
  elif case == 'swiglu':
    module, args = SwiGLU(int(2 / 3 * 4 * HIDDEN)), (x,)
  elif case == 'attention':
    module, args = MultiHeadSelfAttention(HEADS, qk_norm='layer'), (x, rope)
  else:
    module, args = DiTBlock(HIDDEN, HEADS, mlp='swiglu', norm='rms', qk_norm=True), (x, inputs['c'], None, None, rope)
  return module.apply({'params': reference_params(case, module, *args)}, *args)


@pytest.mark.parametrize('case', list(GOLDENS))
def test_matches_lightningdit_reference(case):
  shape, golden = GOLDENS[case]
  out = np.asarray(ours(case))
  assert out.shape == shape
  rms = np.sqrt(golden[1] / out.size)
  got = summary(out)
  np.testing.assert_allclose(got[0], golden[0], atol=1e-4 * rms * out.size**0.5)  # the sum
  np.testing.assert_allclose(got[1], golden[1], rtol=1e-5)  # the sum of squares
  np.testing.assert_allclose(got[2:], golden[2:], atol=2e-5 * rms)  # entries, to float32 rounding


def test_rope_turns_rows_with_the_first_half_and_columns_with_the_second():
  cos, sin = rope_2d(8, 2, 3)  # 2 frequencies per axis: 1 and 1/100 (theta^(-4i / 8))
  angles = np.arctan2(sin, cos)
  token = 1 * 3 + 2  # row 1, column 2
  np.testing.assert_allclose(angles[token], [1, 1, 0.01, 0.01, 2, 2, 0.02, 0.02], rtol=1e-6)
  x = jnp.asarray([1.0, 0.0] * 4).reshape(1, 1, 1, 8).repeat(6, axis=1)
  turned = apply_rope(x, jnp.asarray(cos), jnp.asarray(sin))[0, token, 0]
  np.testing.assert_allclose(turned[:2], [np.cos(1), np.sin(1)], rtol=1e-6)  # (1, 0) turned by 1 radian


def test_options_off_keep_dit_and_swiglu_keeps_the_width():
  x, t, y = jnp.ones((1, 8, 8, 4)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32)
  shapes = lambda **kw: jax.eval_shape(
      DiT(image_size=8, channels=4, num_classes=10, depth=1, hidden_size=48, num_heads=4, **kw).init,
      jax.random.PRNGKey(0), x, t, y)['params']
  dit = shapes()
  assert sorted(dit['blocks_0']) == ['adaLN_modulation', 'attn', 'mlp_fc1', 'mlp_fc2']
  assert sorted(dit['blocks_0']['attn']) == ['proj', 'qkv'] and 'norm_final' not in dit['final_layer']
  lightning = shapes(mlp='swiglu', norm='rms', rope=True, qk_norm=True)
  assert lightning['blocks_0']['mlp']['w3']['kernel'].shape == (128, 48)  # int(2 / 3 * 192)
  # SwiGLU at 2/3 width: 3 * 128 * 48 weights as GELU's 2 * 192 * 48; the biases add 2 * 128 + 48 - (192 + 48)
  extra = 3 * 48 + 2 * 12  # the scales of norm1, norm2 and norm_final, then q_norm and k_norm (head dim 12)
  assert count_params(lightning) - count_params(dit) == 64 + extra


@pytest.mark.parametrize('variant,patch', list(LIGHTNINGDIT_PARAMS))
def test_lightningdit_parameter_counts_match_the_reference_code(variant, patch):
  c = dit_config('XL', 2)
  c.data.image_size, c.data.channels = 16, 32  # VA-VAE f16d32 latents of 256x256 images
  c.diffusion.learn_sigma = False
  c.model.patch_size = patch
  c.model.update(LIGHTNINGDIT_VARIANTS[variant])
  assert count_params(abstract_params(c, build_model(c))) == LIGHTNINGDIT_PARAMS[variant, patch]


def test_dit_xl2_with_the_options_off_is_still_675m():
  c = dit_config('XL', 2)
  assert (c.model.mlp, c.model.norm, c.model.rope, c.model.qk_norm) == ('gelu', 'layer', False, False)
  assert count_params(abstract_params(c, build_model(c))) == 674_834_720  # tests/models/test_dit_convert.py


def tiny_lightningdit_config():
  c = tiny_unet_config()
  c.model = ml_collections.ConfigDict(
      dict(name='dit', patch_size=2, depth=2, hidden_size=64, num_heads=4, mlp='swiglu', norm='rms', rope=True,
           qk_norm=True))
  c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 5
  return validate_config(c)


def test_dit_with_every_option_trains_and_compiles_once():
  c = tiny_lightningdit_config()
  mesh = sharding_lib.create_mesh(c.mesh, jax.devices()[:1])
  model, tx = build_model(c), create_optimizer(c.optim)
  _, shardings = state_shardings(c, model, tx, mesh)
  state = create_state(c, model, tx, mesh)
  step_fn = training_step.make_train_step(c, model, tx, mesh, shardings)
  batcher = StepBatcher(create_source(c.data), c.train.batch_size, c.seed)
  losses = []
  for step in range(24):
    state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batcher.batch(step), mesh))
    losses.append(float(metrics['loss']))
  assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:6]), losses

  apply = jax.jit(lambda p, x, t, y: model.apply({'params': p}, x, t, y))
  x, t, y = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,)), jnp.zeros((2,), jnp.int32)
  apply(state.params, x, t, y)
  apply(state.params, x + 1, t + 5, y + 3)  # new values, same shapes
  assert apply._cache_size() == 1  # pylint: disable=protected-access
  apply(state.params, jnp.zeros((3, 8, 8, 1)), jnp.zeros((3,)), jnp.zeros((3,), jnp.int32))
  assert apply._cache_size() == 2  # pylint: disable=protected-access


@pytest.mark.parametrize('field,value,message', [
    ('mlp', 'geglu', "config.model.mlp='geglu' is not valid; choose one of 'gelu', 'swiglu'"),
    ('norm', 'batch', "config.model.norm='batch' is not valid; choose one of 'layer', 'rms'"),
    ('num_heads', 3, r'config.model.hidden_size=64 is not a multiple of config.model.num_heads=3'),
    ('hidden_size', 72, r'config.model.rope=True needs a head dim .* = 72 / 4 = 18\) divisible by 4'),
])
def test_bad_block_options_name_the_field(field, value, message):
  c = tiny_lightningdit_config()
  c.model[field] = value
  with pytest.raises(ValueError, match=message):
    validate_config(c)

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.dit import dit_config
from configs.unet_cifar10 import get_config as unet_cifar10_config
from models import build_model
from models.dit import DIT_PAPER_GMACS, sincos_pos_embed_2d
from models.shapes import dummy_inputs
from training.state import count_params


def abstract_param_count(config):
  model = build_model(config)
  x, t, cond = dummy_inputs(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **cond))
  return count_params(shapes['params'])


@pytest.mark.parametrize('variant,expected', [('S', 33e6), ('B', 130e6), ('L', 458e6), ('XL', 675e6)])
def test_dit_parameter_counts_match_the_paper(variant, expected):
  # DiT paper Table 4 (patch 2, 256x256 images as 32x32x4 latents, 1000 classes).
  count = abstract_param_count(dit_config(variant, 2))
  assert abs(count - expected) / expected < 0.01, count


@pytest.mark.parametrize('variant', ['S', 'B', 'L', 'XL'])
def test_dit_forward_flops_match_the_paper(variant):
  """XLA's count of the forward (before compilation; dots as 2 x multiply-adds, plus the elementwise ops) at
  32x32x4, batch 1, is the paper's Table 4 within 1% for every patch size: the same network, and the MFU
  of benchmarks/throughput.py counts what runs."""
  for patch, paper_gmacs in DIT_PAPER_GMACS[variant].items():
    c = dit_config(variant, patch)
    c.train.compute_dtype, c.model.attention_impl = 'float32', None
    model = build_model(c)
    x, t, cond = dummy_inputs(c)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **cond))['params']
    analysis = jax.jit(lambda p: model.apply({'params': p}, x, t, **cond)).lower(params).cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    assert analysis['flops'] / 2e9 == pytest.approx(paper_gmacs, rel=0.01), (variant, patch)


def test_ddpm_cifar10_unet_has_35_7m_parameters():
  count = abstract_param_count(unet_cifar10_config())
  assert abs(count - 35.7e6) / 35.7e6 < 0.01, count


def test_unknown_model_name_and_field_fail_loudly():
  c = unet_cifar10_config()
  c.model.name = 'resnet'
  with pytest.raises(ValueError, match="config.model.name='resnet'"):
    build_model(c)
  c = unet_cifar10_config()
  c.model.depth = 3
  with pytest.raises(ValueError, match='depth'):
    build_model(c)


def test_sincos_position_embedding_matches_closed_form():
  emb = sincos_pos_embed_2d(8, 4)  # 16 positions, 4 channels per axis
  assert emb.shape == (16, 8)
  # position (row 1, col 2) is index 6: first half encodes the column, second half the row
  col, row = 2.0, 1.0
  omega = 1 / 10_000**(np.arange(2) / 2)
  expected = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
  np.testing.assert_allclose(emb[6], expected, rtol=1e-6)


@pytest.mark.parametrize('name', ['dit', 'unet'])
def test_forward_shapes_and_null_label(name):
  c = ml_collections.ConfigDict(unet_cifar10_config().to_dict())
  c.data.image_size, c.data.channels, c.data.num_classes = 8, 3, 5
  if name == 'dit':
    c.model = ml_collections.ConfigDict(dict(name='dit', patch_size=2, depth=2, hidden_size=32, num_heads=4))
  else:
    c.model.update(base_channels=16, channel_mult=(1, 2), attn_resolutions=(4,), num_groups=8)
  model = build_model(c)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  t = jnp.array([3.0, 500.0])
  params = model.init(jax.random.PRNGKey(1), x, t, jnp.array([0, 1]))['params']
  # Perturb all parameters so zero-initialised output layers do not hide the conditioning.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  apply = jax.jit(lambda y: model.apply({'params': params}, x, t, y))
  out_a = apply(jnp.array([0, 1]))
  out_null = apply(jnp.array([5, 5]))  # index num_classes = null label
  assert out_a.shape == x.shape and out_a.dtype == jnp.float32
  assert float(jnp.abs(out_a - out_null).max()) > 1e-4  # the label changes the output


def test_dit_initialisation_is_the_papers():
  """DiT's initialize_weights: xavier-uniform linears (the patch embedding's conv as a [hidden, C p p] matrix),
  N(0, 0.02^2) timestep MLP and label table, zero adaLN and output layers, zero biases. Checked by the closed-form
  std of each distribution (uniform on +-b: b / sqrt(3)) and its bound."""
  c = dit_config('S', 2)
  c.data.update(image_size=8, channels=4, num_classes=10)
  c.model.update(depth=1, hidden_size=64, num_heads=4)
  model = build_model(c)
  x, t, cond = dummy_inputs(c)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, **cond)['params']
  hidden, fan_patch = 64, 2 * 2 * 4
  xavier = lambda fan_in, fan_out: np.sqrt(6 / (fan_in + fan_out))
  block = params['blocks_0']
  uniform = {
      'x_embedder': (params['x_embedder']['kernel'], xavier(fan_patch, hidden)),
      'qkv': (block['attn']['qkv']['kernel'], xavier(hidden, 3 * hidden)),
      'proj': (block['attn']['proj']['kernel'], xavier(hidden, hidden)), 'mlp_fc1':
          (block['mlp_fc1']['kernel'], xavier(hidden, 4 * hidden)), 'mlp_fc2': (block['mlp_fc2']['kernel'],
                                                                                xavier(4 * hidden, hidden))
  }
  for name, (kernel, bound) in uniform.items():
    kernel = np.asarray(kernel)
    assert np.abs(kernel).max() <= bound, name
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.06, err_msg=name)
  for kernel in (params['t_embedder']['mlp_0']['kernel'], params['t_embedder']['mlp_2']['kernel'],
                 params['y_embedder']['embedding_table']['embedding']):
    np.testing.assert_allclose(np.asarray(kernel).std(), 0.02, rtol=0.06)
  zero = [
      block['adaLN_modulation']['kernel'], params['final_layer']['adaLN_modulation']['kernel'],
      params['final_layer']['linear']['kernel']
  ]
  zero += [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == 'bias']
  assert all(float(np.abs(np.asarray(leaf)).max()) == 0 for leaf in zero)
  # a text DiT's cross-attention (PixArt-alpha): xavier-uniform q/k/v from the hidden (q) and context (k, v) widths
  from models.dit import DiTBlock
  context_width = 48
  block = DiTBlock(hidden, 4).init(jax.random.PRNGKey(1), jnp.zeros((1, 4, hidden)), jnp.zeros((1, hidden)),
                                   jnp.zeros((1, 7, context_width)))['params']['cross_attn']
  for name, fan_in in (('q', hidden), ('k', context_width), ('v', context_width)):
    kernel = np.asarray(block[name]['kernel'])
    assert np.abs(kernel).max() <= xavier(fan_in, hidden), name
    np.testing.assert_allclose(kernel.std(), xavier(fan_in, hidden) / np.sqrt(3), rtol=0.06, err_msg=name)
  assert float(np.abs(np.asarray(block['proj']['kernel'])).max()) == 0


def test_bfloat16_compute_keeps_float32_params():
  c = unet_cifar10_config()
  c.train.compute_dtype = 'bfloat16'
  c.data.image_size = 8
  c.model.update(base_channels=16, channel_mult=(1,), attn_resolutions=(8,), num_groups=8)
  model = build_model(c)
  x, t, cond = dummy_inputs(c)
  params = model.init(jax.random.PRNGKey(0), x, t, **cond)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert model.apply({'params': params}, x, t, **cond).dtype == jnp.float32


def test_attention_key_lengths_mask_the_padding_on_every_path():
  """Key lengths are a padding mask; the 'cudnn' request (falling back here, after padding 7 keys to 8 as the
  kernel needs) computes what XLA's attention with an explicit boolean mask does."""
  from models.layers import attention
  rng = np.random.default_rng(0)
  q, k, v = (
      jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((3, 5, 2, 8), (3, 7, 2, 8), (3, 7, 2, 8)))
  lengths = jnp.array([1, 4, 7])
  mask = (jnp.arange(7)[None] < lengths[:, None])[:, None, None, :]
  expected = jax.nn.dot_product_attention(q, k, v, mask=mask)
  for implementation in (None, 'cudnn'):
    np.testing.assert_allclose(attention(q, k, v, implementation, lengths), expected, atol=1e-6)
  # a key past the length changes nothing; within it, it does
  moved = v.at[:, 3].add(10.0)  # key 3: padding for example 0 (length 1), attended by example 1 (length 4)
  np.testing.assert_allclose(attention(q, k, moved, None, lengths)[0], expected[0], atol=1e-6)
  assert float(jnp.abs(attention(q, k, moved, None, lengths)[1] - expected[1]).max()) > 1e-2


def test_layer_norm_and_gelu_with_lean_backward_passes_match_autodiff():
  """models/layers.layer_norm and gelu_tanh keep less for their backward pass; values and gradients are
  those of flax's LayerNorm and jax's tanh GELU (float32 and bfloat16)."""
  import flax.linen as nn
  from models.layers import gelu_tanh, layer_norm
  x = 3 * jax.random.normal(jax.random.PRNGKey(0), (4, 16, 96)) + 0.5
  weights = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  reference_norm = nn.LayerNorm(use_bias=False, use_scale=False, epsilon=1e-6)
  pairs = [(layer_norm, lambda v: reference_norm.apply({}, v)), (gelu_tanh, lambda v: nn.gelu(v, approximate=True))]
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
    v = x.astype(dtype)
    for ours, reference in pairs:
      value_and_grad = lambda f: jax.value_and_grad(lambda v: jnp.sum(weights * f(v).astype(jnp.float32)))(v)
      (got, got_grad), (want, want_grad) = value_and_grad(ours), value_and_grad(reference)
      assert got_grad.dtype == dtype
      np.testing.assert_allclose(got, want, rtol=tol)
      np.testing.assert_allclose(np.asarray(got_grad, np.float32), np.asarray(want_grad, np.float32), rtol=tol,
                                 atol=tol * float(jnp.abs(want_grad.astype(jnp.float32)).max()))

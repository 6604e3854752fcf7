"""Gradient accumulation (config.train.grad_accum_steps): k microbatches make the update of the whole batch."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from training import sharding as sharding_lib
from training import step as training_step
from configs.validate import validate_config
from configs.dit import dit_config
from input_pipeline import StepBatcher, create_source
from models import build_model
from tests.tiny import tiny_unet_config
from training.state import create_optimizer, create_state, state_shardings


def tiny_dit_config():
  c = dit_config('S', 4)  # learned variances (hybrid loss), as the paper's DiTs
  c.data.source, c.data.image_size, c.data.channels, c.data.num_classes = 'digits', 8, 1, 10
  c.sample.guidance_channels = 0  # DiT guides 3 of its 4 latent channels; the digits have one
  c.model.depth, c.model.hidden_size, c.model.num_heads = 2, 32, 2
  c.train.update(batch_size=32, num_steps=4, log_every=2, checkpoint_every=2, sample_grid=0, compute_dtype='float32')
  c.data.prefetch, c.evals = 0, {}
  return c


def tiny_classifier_config():
  from configs.digits_classifier import get_config
  c = get_config()
  c.model.update(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4,
                 num_head_channels=8)
  c.train.update(batch_size=32, num_steps=4, log_every=2, checkpoint_every=2)
  c.data.prefetch = 0
  return c


def unet_config():
  c = tiny_unet_config()  # one level, with the middle block's attention
  c.train.batch_size = 32
  c.model.dropout = 0.0  # microbatches draw other dropout masks than the whole batch; everything else is the same
  return c


CONFIGS = {'unet': unet_config, 'dit_learned_sigma': tiny_dit_config, 'classifier': tiny_classifier_config}


def one_step_gradient(config, devices, mesh_shape, accum):
  """(gradient, metrics) of the first train step, read off as the update of SGD with learning rate 1 (AdamW's
  first update is lr x sign(g) for all but tiny g, which float32 rounding of a near-zero gradient can flip)."""
  config.mesh.data, config.mesh.fsdp = mesh_shape
  config.train.grad_accum_steps = accum
  config = validate_config(config)
  mesh = sharding_lib.create_mesh(config.mesh, devices)
  model, tx = build_model(config), optax.sgd(1.0)
  _, shardings = state_shardings(config, model, tx, mesh)
  state = create_state(config, model, tx, mesh, shardings)
  before = jax.device_get(state.params)
  step_fn = training_step.make_train_step(config, model, tx, mesh, shardings)
  batch = StepBatcher(create_source(config.data), config.train.batch_size, config.seed).batch(0)
  state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batch, mesh))
  return jax.tree.map(np.subtract, before, jax.device_get(state.params)), jax.device_get(metrics)


@functools.lru_cache(maxsize=None)
def whole_batch_on_one_device(name):
  """The reference of both tests below: (gradient, metrics) of the whole batch on one device."""
  return one_step_gradient(CONFIGS[name](), jax.devices()[:1], (1, 1), accum=1)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_accumulated_microbatches_update_as_the_whole_batch(name):
  """One device and the whole batch vs 8 devices (2 x 4 mesh, parameters sharded) and 4 microbatches of 8: the
  same loss, metrics and gradient within float32 tolerance."""
  grads_1, metrics_1 = whole_batch_on_one_device(name)
  grads_k, metrics_k = one_step_gradient(CONFIGS[name](), jax.devices(), (2, 4), accum=4)
  assert set(metrics_1) == set(metrics_k)
  for key in metrics_1:
    np.testing.assert_allclose(metrics_k[key], metrics_1[key], rtol=2e-5, err_msg=key)
  assert metrics_1['grad_norm'] > 1e-3
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_1))  # (zero-initialised layers: some g = 0)
  for path, g1 in jax.tree_util.tree_leaves_with_path(grads_1):
    gk = grads_k
    for key in path:
      gk = gk[key.key]
    np.testing.assert_allclose(gk, g1, rtol=1e-3, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('name', ['unet', 'dit_learned_sigma'])
def test_data_parallel_accumulation_updates_as_the_whole_batch(name):
  """8 x 1 (the shard_map path: each device accumulates its own rows, one all-reduce per update)."""
  grads_1, metrics_1 = whole_batch_on_one_device(name)
  grads_k, metrics_k = one_step_gradient(CONFIGS[name](), jax.devices(), (8, 1), accum=2)
  np.testing.assert_allclose(metrics_k['loss'], metrics_1['loss'], rtol=2e-5)
  np.testing.assert_allclose(metrics_k['grad_norm'], metrics_1['grad_norm'], rtol=2e-5)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads_1))
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_k)):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * scale)


def test_data_parallel_accumulation_all_reduces_once_per_update():
  """In the compiled 8 x 1 step no all-reduce sits inside a loop: the gradients cross devices once per update, not
  after each of the 4 microbatches (XLA's placement when the scan runs on the global batch)."""
  import re
  c = tiny_dit_config()
  c.train.grad_accum_steps, c.mesh.data, c.mesh.fsdp, c.mesh.num_devices = 4, 8, 1, -1
  c = validate_config(c)
  mesh = sharding_lib.create_mesh(c.mesh)
  model, tx = build_model(c), create_optimizer(c.optim)
  abstract, shardings = state_shardings(c, model, tx, mesh)
  batch = {'image': jax.ShapeDtypeStruct((32, 8, 8, 1), jnp.float32), 'label': jax.ShapeDtypeStruct((32,), jnp.int32)}
  hlo = training_step.make_train_step(c, model, tx, mesh, shardings).lower(abstract, batch).compile().as_text()
  bodies = set(re.findall(r'body=%?([\w.\-]+)', hlo))
  assert bodies  # the accumulation loop is there
  computations = {chunk.split(' ', 1)[0].lstrip('%'): chunk for chunk in re.split(r'\n(?=\S)', hlo)}
  in_loops = sum(len(re.findall(r'\ball-reduce(-start)?\(', computations[b])) for b in bodies if b in computations)
  assert in_loops == 0 and re.search(r'\ball-reduce(-start)?\(', hlo)


def test_microbatches_split_within_each_device():
  """Microbatch i holds examples i, i + k, ...: on 8 devices each microbatch takes an equal share of every device's
  rows, so the split is local (each device's output rows are its own input rows)."""
  mesh = sharding_lib.create_mesh(validate_config(tiny_unet_config(mesh__num_devices=-1)).mesh)  # 8 x 1
  x = jax.device_put(jnp.arange(64.0), sharding_lib.batch_sharding(mesh))
  split = jax.jit(lambda x: training_step.microbatches(x, 4, sharding_lib.batch_sharding(mesh, stacked=True)))(x)
  np.testing.assert_array_equal(split, np.arange(64.0).reshape(16, 4).T)
  for shard in split.addressable_shards:
    rows = np.asarray(shard.data).ravel()
    device_block = rows[0] // 8
    assert shard.data.shape == (4, 2) and np.all(rows // 8 == device_block)


def compiled_temp_bytes(config):
  config = validate_config(config)
  mesh = sharding_lib.create_mesh(config.mesh, jax.devices()[:1])
  model, tx = build_model(config), create_optimizer(config.optim)
  abstract, shardings = state_shardings(config, model, tx, mesh)
  batch = {
      'image': jax.ShapeDtypeStruct((config.train.batch_size, 8, 8, 1), jnp.float32), 'label': jax.ShapeDtypeStruct(
          (config.train.batch_size,), jnp.int32)
  }
  step = training_step.make_train_step(config, model, tx, mesh, shardings)
  return step.lower(abstract, batch).compile().memory_analysis().temp_size_in_bytes


def test_accumulation_holds_fewer_activations():
  """XLA's own buffer assignment: the step's scratch memory (activations) shrinks with the microbatch size (this
  DiT at batch 256: 9.0 MB whole, 2.6 MB in 4 microbatches)."""
  def config(accum):
    c = tiny_dit_config()
    c.train.batch_size, c.train.grad_accum_steps = 256, accum
    return c

  whole, quarter = compiled_temp_bytes(config(1)), compiled_temp_bytes(config(4))
  assert quarter < 0.5 * whole, (whole, quarter)


def test_bad_accumulation_is_refused_with_the_numbers():
  c = unet_config()
  c.train.grad_accum_steps = 3
  with pytest.raises(ValueError, match=r'grad_accum_steps=3 must divide config\.train\.batch_size=32'):
    validate_config(c)
  c.train.grad_accum_steps = 0
  with pytest.raises(ValueError, match=r'config\.train\.grad_accum_steps=0 must be positive'):
    validate_config(c)
  c = validate_config(unet_config())
  c.mesh.num_devices = -1
  c.train.grad_accum_steps = 8  # divides 32, but not the 4 rows of each of 8 devices
  mesh = sharding_lib.create_mesh(c.mesh)
  with pytest.raises(
      ValueError, match=r'grad_accum_steps=8 must divide the batch of each device, 4 '
      r'\(config\.train\.batch_size=32 over 8 devices\)'):
    training_step.check_batch_sizes(c, mesh)
  c.train.grad_accum_steps, c.train.batch_size = 1, 12
  with pytest.raises(
      ValueError, match=r'config\.train\.batch_size=12 does not split over the 8 devices of the mesh: '
      r'make it a multiple of 8'):
    training_step.check_batch_sizes(c, mesh)


def test_accumulation_inside_several_steps_per_call():
  """grad_accum_steps=2 with steps_per_call=2 (a scan of accumulating steps) makes the updates of two plain steps."""
  def run(accum, stacked):
    c = tiny_dit_config()
    c.train.grad_accum_steps, c.mesh.data, c.mesh.fsdp, c.optim.warmup_steps = accum, 2, 4, 0
    c.mesh.num_devices = -1
    c = validate_config(c)
    mesh = sharding_lib.create_mesh(c.mesh)
    model, tx = build_model(c), optax.sgd(0.1)
    _, shardings = state_shardings(c, model, tx, mesh)
    state = create_state(c, model, tx, mesh)
    batcher = StepBatcher(create_source(c.data), c.train.batch_size, c.seed)
    step_fn = training_step.make_train_step(c, model, tx, mesh, shardings, stacked=stacked)
    if stacked:
      state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batcher.batches(0, 2), mesh, stacked=True))
      return jax.device_get(state.params), np.asarray(metrics['loss'])
    losses = []
    for step in range(2):
      state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batcher.batch(step), mesh))
      losses.append(float(metrics['loss']))
    return jax.device_get(state.params), np.asarray(losses)

  params_plain, losses_plain = run(1, stacked=False)
  params_scan, losses_scan = run(2, stacked=True)
  np.testing.assert_allclose(losses_scan, losses_plain, rtol=2e-5)
  assert losses_plain[0] != losses_plain[1]
  for a, b in zip(jax.tree.leaves(params_plain), jax.tree.leaves(params_scan)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)

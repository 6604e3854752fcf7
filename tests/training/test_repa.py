"""REPA (training/repa.py): the loss against REPA's own code, the projector of SiT-XL/2, training with a frozen
encoder, the weight's stop step, the config checks and the digits encoder's workdir through the train job."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.validate import validate_config
from input_pipeline import StepBatcher, create_source
from jobs import train
from jobs.repa import load_repa_encoder
from jobs.restore import setup, write_config
from models import build_model
from models.adm_classifier import ADMClassifier
from tests.tiny import tiny_unet_config
from training import sharding as sharding_lib
from training import step as training_step
from training.checkpoints import model_signature
from models.dinov2 import DINOv2, DINOV2_VARIANTS, save_dinov2
from training.repa import classifier_tokens_fn, dinov2_tokens_fn, repa_loss_per_example, repa_weight
from training.state import create_optimizer, create_state, state_shardings

# REPA's loss.py (sihyun-yu/REPA at 67f714503e3892f993844aab088ffc5791c92613), SILoss()(model, images, zs=[z]) with a
# model returning zs_tilde = [z_tilde] for the tensors of `reference_tensors`, in torch 2.13 (CPU): proj_loss.
REPA_PROJ_LOSS = -0.08521237969398499


def reference_tensors():
  b, n, c = 2, 4, 3
  z = np.cos(np.arange(b * n * c) * 0.7).reshape(b, n, c)
  z_tilde = np.sin(np.arange(b * n * c) * 1.3 + 0.2).reshape(b, n, c) * 3.0
  return jnp.asarray(z_tilde, jnp.float32), jnp.asarray(z, jnp.float32)


def test_loss_matches_repa_reference():
  projected, target = reference_tensors()
  per_example = repa_loss_per_example(projected, target)
  assert per_example.shape == (2,)
  assert float(per_example.mean()) == pytest.approx(REPA_PROJ_LOSS, rel=1e-6)
  assert float(repa_loss_per_example(target, target).mean()) == pytest.approx(-1.0, rel=1e-6)  # aligned: -1


def test_weight_stops_at_stop_step():
  steps = jnp.arange(4)
  np.testing.assert_array_equal(jax.vmap(lambda s: repa_weight(s, 0.5, 2))(steps), [0.5, 0.5, 0.0, 0.0])
  assert float(repa_weight(jnp.int32(10**6), 0.5, 0)) == 0.5  # stop_step 0: never


def test_sit_xl_2_projector_shapes():
  c = ml_collections.ConfigDict(tiny_unet_config().to_dict())
  c.model = ml_collections.ConfigDict(dict(name='dit', depth=28, hidden_size=1152, num_heads=16, patch_size=2))
  c.data.image_size, c.data.channels, c.data.num_classes = 32, 4, 1000
  c.repa.update(encoder='dinov2_vitb14', depth=8, encoder_dim=768, projector_dim=2048)
  model = build_model(c)
  x, t, y = jnp.zeros((2, 32, 32, 4)), jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y)['params']
  projector = jax.tree.map(lambda s: s.shape, params['repa_projector'])
  assert projector == {
      'fc1': {'kernel': (1152, 2048), 'bias': (2048,)}, 'fc2': {'kernel': (2048, 2048), 'bias': (2048,)},
      'fc3': {'kernel': (2048, 768), 'bias': (768,)}
  }
  assert sum(np.prod(s.shape) for s in jax.tree.leaves(params['repa_projector'])) == 8_131_328
  out, state = jax.eval_shape(lambda p: model.apply({'params': p}, x, t, y, mutable=['intermediates']), params)
  assert out.shape == (2, 32, 32, 4) and state['intermediates']['repa'][0].shape == (2, 256, 768)
  assert jax.eval_shape(lambda p: model.apply({'params': p}, x, t, y), params).shape == (2, 32, 32, 4)


def tiny_repa_config(**repa):
  c = tiny_unet_config()
  c.model = ml_collections.ConfigDict(dict(name='dit', depth=2, hidden_size=32, num_heads=2, patch_size=2))
  c.optim.learning_rate, c.optim.warmup_steps, c.optim.decay_steps = 3e-3, 0, 0
  c.repa.update({'encoder': 'digits', 'depth': 1, 'projector_dim': 32, 'encoder_dim': 16, **repa})
  return c


def test_tiny_dit_trains_with_repa_and_compiles_once():
  c = tiny_repa_config(stop_step=6)
  encoder = ADMClassifier(8, 1, 10, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                          num_head_channels=8, num_groups=4)
  x, y = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)
  encoder_params = jax.jit(encoder.init)(jax.random.PRNGKey(1), x, y)['params']
  mesh = sharding_lib.create_mesh(c.mesh, jax.devices()[:1])
  model, tx = build_model(c), create_optimizer(c.optim)
  _, shardings = state_shardings(c, model, tx, mesh)
  state = create_state(c, model, tx, mesh, shardings)
  step_fn = training_step.make_train_step(c, model, tx, mesh, shardings, repa_tokens=classifier_tokens_fn(encoder))
  batcher = StepBatcher(create_source(c.data), c.train.batch_size, c.seed)
  history = []
  for step in range(8):
    state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batcher.batch(step), mesh), encoder_params)
    history.append({k: float(v) for k, v in metrics.items()})
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access
  repa = [m['repa_loss'] for m in history]
  assert -1.0 <= min(repa) and repa[5] < repa[0] - 0.2, repa
  assert all(np.isfinite(m['diffusion_loss']) for m in history)
  for m in history[:6]:
    assert m['loss'] == pytest.approx(m['diffusion_loss'] + 0.5 * m['repa_loss'], rel=1e-5)
  for m in history[6:]:  # stop_step=6: the weight is 0
    assert m['loss'] == pytest.approx(m['diffusion_loss'], rel=1e-6)


@pytest.mark.parametrize('change, field', [
    (dict(repa__encoder='dino'), 'config.repa.encoder'),
    (dict(repa__depth=3), 'config.repa.depth'),
    (dict(repa__weight=-1.0), 'config.repa.weight'),
    (dict(repa__encoder_weights=''), 'config.repa.encoder_weights'),
    (dict(repa__encoder_weights='/nonexistent', repa__encoder_dim=0), 'config.repa.encoder_weights'),
])
def test_config_errors_name_the_field(change, field):
  c = tiny_repa_config(encoder_weights='/nonexistent')
  for key, value in change.items():
    section, name = key.split('__')
    c[section][name] = value
  with pytest.raises((ValueError, FileNotFoundError), match=field.replace('.', r'\.')):
    validate_config(c)


def dinov2_config(**repa):
  c = tiny_repa_config(
      **{'encoder': 'dinov2_vitb14', 'encoder_weights': '/nonexistent.msgpack', 'encoder_dim': 0, **repa})
  c.data.channels, c.data.image_size, c.model.patch_size = 3, 32, 2  # 16x16 tokens, as DINOv2 at 224
  return c


def test_dinov2_fills_its_width_and_checks_the_token_grid():
  assert validate_config(dinov2_config()).repa.encoder_dim == 768
  assert validate_config(dinov2_config(encoder='dinov2_vitl14_reg')).repa.encoder_dim == 1024
  with pytest.raises(ValueError, match=r'16x16 token grid.*8x8 tokens.*encoder_resolution=112'):
    c = dinov2_config()
    c.model.patch_size = 4
    validate_config(c)
  with pytest.raises(ValueError, match=r'config\.repa\.encoder_resolution=200 must be a positive multiple'):
    validate_config(dinov2_config(encoder_resolution=200))
  with pytest.raises(ValueError, match=r'config\.repa\.encoder_dim=512'):
    validate_config(dinov2_config(encoder_dim=512))
  c = dinov2_config()
  c.data.channels = 1
  with pytest.raises(ValueError, match=r'config\.repa\.encoder=.*RGB'):
    validate_config(c)


def test_dinov2_on_latents_reads_the_stored_images():
  c = dinov2_config()  # 32x32x4 latents of 256 px RGB images, patch 2: 16x16 tokens, DINOv2's at 224
  c.data.source, c.data.path, c.data.channels, c.sample.clip_denoised = 'latents', '/x', 4, False
  assert validate_config(c.copy_and_resolve_references()).repa.encoder_dim == 768
  c.model.patch_size = 4
  with pytest.raises(ValueError, match=r'16x16 token grid.*8x8 tokens \(data\.image_size=32.*encoder_resolution=112'):
    validate_config(c.copy_and_resolve_references())
  c.model.patch_size, c.data.pixels.channels = 2, 1
  with pytest.raises(ValueError, match=r'RGB images; config\.data\.pixels\.channels=1'):
    validate_config(c)


def test_dinov2_tokens_of_the_batch_pixels(tmp_path):
  vitb = DINOv2(**DINOV2_VARIANTS['dinov2_vitb14'])
  images = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  params = jax.eval_shape(vitb.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))['params']
  assert jax.eval_shape(dinov2_tokens_fn(vitb, 224), params, images).shape == (2, 256, 768)
  tiny = DINOv2(width=32, depth=1, num_heads=2, mlp_dim=64)  # not a released variant: refused by name
  path = str(tmp_path / 'tiny.msgpack')
  save_dinov2(path, tiny, tiny.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 3)))['params'])
  c = validate_config(dinov2_config(encoder_weights=path))
  with pytest.raises(ValueError, match=r'config\.repa\.encoder_weights=.*tiny\.msgpack holds a DINOv2'):
    load_repa_encoder(c, sharding_lib.create_mesh(c.mesh, jax.devices()[:1]))


def test_unet_refuses_repa():
  c = tiny_unet_config()
  c.repa.update(encoder='digits', encoder_weights='/nonexistent')
  with pytest.raises(ValueError, match=r'config\.model\.name'):
    validate_config(c)


def write_digits_encoder(workdir):
  """A digits encoder's workdir as configs/digits_encoder.py leaves it (config.json, a checkpoint), untrained."""
  c = tiny_unet_config()
  c.model = ml_collections.ConfigDict(
      dict(name='adm_classifier', base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
           num_head_channels=8, num_groups=4))
  c.diffusion.label_dropout = 0.0
  c = validate_config(c)
  model, tx, mesh, _, _, store = setup(c, workdir)
  store.save(0, create_state(c, model, tx, mesh), model_signature(c))
  store.close()
  write_config(c, workdir)


def test_train_job_reads_the_digits_encoder_workdir(tmp_path):
  write_digits_encoder(str(tmp_path / 'encoder'))
  c = tiny_repa_config(encoder_weights=str(tmp_path / 'encoder'), encoder_dim=0)
  c.train.num_steps = 2
  c = validate_config(c)
  assert c.repa.encoder_dim == 16  # base_channels 8 x channel_mult[-1] 2, read from the encoder's config.json
  state = train.train_and_evaluate(c, str(tmp_path / 'dit'))
  assert int(state.step) == 2 and 'repa_projector' in state.params
  assert os.path.exists(tmp_path / 'dit' / 'checkpoints')

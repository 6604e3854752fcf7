"""Super-resolution models (config.model.low_res_size; ADM's SuperResModel): the low-resolution condition, its
sources and checks, and a digit upsampler trained and sampled end to end."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jobs import sample
from jobs import train
from configs.validate import validate_config
from configs.quickstart import get_config as quickstart_config
from input_pipeline.sources import digits_source
from models import build_model
from jobs.conditions import default_conditions, null_condition_for
from models.conditioning import area_downsample, condition_from_batch, drop_condition


def sr_config(**sample_fields):
  c = quickstart_config('super_res')
  c.sample.update(**sample_fields)
  c.mesh.num_devices = 1  # one of the 8 fake devices: sharding is not the point (tests/tiny.py)
  return c


def write_base_samples(path, images_uint8, labels):
  np.savez(path, images_uint8, labels)  # arr_0, arr_1: what --mode=sample writes
  return str(path)


def test_area_downsample_is_the_block_mean():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  out = np.asarray(area_downsample(jnp.asarray(x), 2))
  assert out.shape == (2, 2, 2, 3)
  np.testing.assert_allclose(out[0, 0, 1], x[0, 0:2, 2:4].mean(axis=(0, 1)))
  np.testing.assert_allclose(out[1, 1, 0], x[1, 2:4, 0:2].mean(axis=(0, 1)))
  np.testing.assert_allclose(area_downsample(x, 1)[:, 0, 0], x.mean(axis=(1, 2)))


def test_the_condition_is_the_downsampled_batch_and_guidance_keeps_it():
  config = validate_config(sr_config())
  images = jax.random.uniform(jax.random.PRNGKey(0), (6, 8, 8, 1), minval=-1, maxval=1)
  cond = condition_from_batch({'image': images, 'label': jnp.arange(6)}, config)
  np.testing.assert_allclose(cond['low_res'], area_downsample(images, 4))
  null = null_condition_for(cond, config)
  assert (null['y'] == 10).all() and null['low_res'] is cond['low_res']
  dropped = drop_condition(jax.random.PRNGKey(1), cond, 0.999, null)
  assert (dropped['y'] == 10).all()
  np.testing.assert_array_equal(dropped['low_res'], cond['low_res'])


def test_the_model_asks_for_its_low_resolution_input():
  config = validate_config(sr_config())
  model = build_model(config)
  x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,))
  params = model.init(jax.random.PRNGKey(0), x, t, y=jnp.zeros(2, jnp.int32), low_res=jnp.zeros((2, 4, 4, 1)))
  assert params['params']['conv_in']['kernel'].shape[2] == 2  # the image and its upsampled low-resolution version
  with pytest.raises(ValueError, match=r'super-resolution model: pass low_res=\[B, 4, 4, 1\] images, got None'):
    model.apply(params, x, t, y=jnp.zeros(2, jnp.int32))


def test_low_resolution_conditions_come_from_base_samples_or_the_dataset(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)
  path = write_base_samples(tmp_path / 'base.npz', images, np.array([3, 1, 4, 1, 5]))
  cond = default_conditions(4, validate_config(sr_config(low_res_samples=path)))
  np.testing.assert_allclose(cond['low_res'], images[:4] / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(cond['y'], [3, 1, 4, 1])

  from_data = default_conditions(3, validate_config(sr_config()))
  digits = digits_source(8, 1).get(np.arange(3))
  np.testing.assert_allclose(from_data['low_res'], area_downsample(digits['image'], 4), atol=1e-6)
  np.testing.assert_array_equal(from_data['y'], digits['label'])


@pytest.mark.parametrize('what, message', [
    ('missing', r"low_res_samples='.*missing\.npz': no such file; give the samples\.npz of a 4x4 base model"),
    ('shape', r'holds arr_0 uint8 \(5, 8, 8, 1\); this super-resolution model upsamples uint8 images '
     r'\[N, 4, 4, 1\] \(config\.model\.low_res_size=4'),
    ('few', r'holds 5 images, fewer than the 6 to upsample: set --config\.sample\.num_samples=5'),
    ('labels', r'has no labels \(arr_1\), which this class-conditional model needs'),
])
def test_bad_base_samples_are_refused_naming_the_problem(tmp_path, what, message):
  images = np.zeros((5, 8 if what == 'shape' else 4, 8 if what == 'shape' else 4, 1), np.uint8)
  path = str(tmp_path / 'base.npz')
  if what == 'labels':
    np.savez(path, images)
  elif what != 'missing':
    write_base_samples(path, images, np.zeros(5, np.int32))
  else:
    path = str(tmp_path / 'missing.npz')
  with pytest.raises(ValueError, match=message):
    default_conditions(6 if what == 'few' else 5, validate_config(sr_config(low_res_samples=path)))


@pytest.mark.parametrize('field, value, message', [
    ('model.low_res_size', 3, r'low_res_size=3 must divide config\.data\.image_size=8 and be smaller'),
    ('model.low_res_size', 8, r'low_res_size=8 must divide'),
    ('sample.low_res_samples', 'base.npz', r'low_res_samples is set, but the model is not a super-resolution'),
    ('data.source', 'latents', r'super-resolution models here work on pixels'),
])
def test_bad_super_resolution_configs_are_refused(field, value, message):
  c = quickstart_config() if field == 'sample.low_res_samples' else sr_config()
  section, name = field.split('.')
  c[section][name] = value
  if value == 'latents':
    c.data.update(path='/tmp', random_flip=False)
    c.sample.clip_denoised = False
  with pytest.raises(ValueError, match=message):
    validate_config(c)


def test_a_digit_upsampler_learns_to_agree_with_its_input(tmp_path):
  """Trained 150 steps on the digits (8x8 from 4x4), then sampled from base samples it never saw: area-downsampled,
  its samples match their own low-resolution inputs far better than each other's."""
  digits = digits_source(8, 1).get(np.arange(1797))
  held_out = slice(1700, 1764)
  low = np.asarray(area_downsample(digits['image'][held_out], 4))
  low_uint8 = np.clip(np.round((low + 1) * 127.5), 0, 255).astype(np.uint8)
  path = write_base_samples(tmp_path / 'base.npz', low_uint8, digits['label'][held_out])
  c = sr_config(low_res_samples=path, num_samples=64, batch_size=64, num_steps=10)
  # No attention, batch 32 and a short warmup: a fraction of the super_res config's compute, as good (measured below).
  c.model.update(base_channels=16, num_groups=4, attn_resolutions=())
  c.train.update(num_steps=150, batch_size=32, log_every=50, checkpoint_every=150, sample_grid=0)
  c.optim.warmup_steps = 20
  c.data.prefetch = 0
  c.evals = {}
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(validate_config(c), workdir)
  sample.run_sample_job(c, workdir)
  with np.load(os.path.join(workdir, 'samples.npz')) as f:
    images, labels = f['arr_0'], f['arr_1']
  assert images.shape == (64, 8, 8, 1)
  np.testing.assert_array_equal(labels, digits['label'][held_out])  # the base samples' labels
  got = np.asarray(area_downsample(images.astype(np.float32) / 127.5 - 1, 4))
  target = low_uint8.astype(np.float32) / 127.5 - 1
  match, mismatch = np.abs(got - target).mean(), np.abs(got - np.roll(target, 1, axis=0)).mean()
  print(f'mean |downsampled sample - its input| {match:.3f}, - another input {mismatch:.3f}')
  assert match < 0.15 and mismatch > 2.5 * match  # measured: 0.102 and 0.343

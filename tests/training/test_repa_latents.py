"""REPA on a latent dataset (docs/repa.md): the encode job stores each image once, exactly, beside its latents; the
latent source returns them as 'pixels' aligned with the latents (a mirror entry's flipped); the train step feeds them
to the frozen encoder; a directory without them is refused at start-up, and encoding again adds them."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.validate import validate_config
from input_pipeline import StepBatcher, create_source
from input_pipeline.images import to_unit_range
from input_pipeline.latents import read_meta, shard_path
from jobs import train
from jobs.encode import encode_dataset
from models import build_model
from models.dinov2 import DINOv2
from tests.input_pipeline.test_latents import latent_config, write_images_and_vae
from training import sharding as sharding_lib
from training import step as training_step
from training.repa import dinov2_tokens_fn, encoder_images
from training.state import create_optimizer, create_state, state_shardings


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """An image folder of 2 classes x 2 16x16 RGB images (their mirrors differ) and a tiny random VAE."""
  return write_images_and_vae(tmp_path_factory.mktemp('repa_latents'), ['a', 'b'], 2, seed=1, band=4)


def repa_config(files, out, repa=True):
  """8x8x4 latents of 16 px images in shards of 3 (3 + 1 images, 8 entries with flips); with `repa`, DINOv2-S at
  56 px: 4x4 tokens, the grid of the DiT with patch 2."""
  c = latent_config(files, out).copy_and_resolve_references()
  c.encode.shard_size = 3
  if repa:
    c.repa.update(encoder='dinov2_vits14', encoder_weights='/nonexistent.msgpack', encoder_resolution=56, depth=1,
                  projector_dim=32)
  return validate_config(c)


def image_files(files):
  """The images in the encoded order (classes, then files, sorted), uint8."""
  return np.stack([np.asarray(Image.open(files / 'images' / c / f'{i}.png')) for c in ('a', 'b') for i in range(2)])


@pytest.fixture(scope='module')
def encoded(files):
  c = repa_config(files, 'with_pixels')
  encode_dataset(c, progress=False)
  return c


def test_encode_stores_each_image_once_and_the_source_flips_the_mirrors(files, encoded):
  path, images = encoded.data.path, image_files(files)
  assert read_meta(path)['pixel_shape'] == [16, 16, 3]
  stored = np.concatenate([np.load(shard_path(path, 'pixels', s)) for s in (0, 1)])
  assert stored.dtype == np.uint8
  np.testing.assert_array_equal(stored, images)  # exactly the decoded files
  indices = np.array([0, 4, 3, 7, 5, 2])  # entry 4 + i is image i mirrored; image 3 is in shard 1
  batch = create_source(encoded.data, pixels=True).get(indices)
  np.testing.assert_array_equal(
      batch['pixels'], [images[0], images[0, :, ::-1], images[3], images[3, :, ::-1], images[1, :, ::-1], images[2]])
  plain = create_source(encoded.data).get(indices)  # without REPA: latents and labels only, the same ones
  assert set(plain) == {'image', 'label'}
  np.testing.assert_array_equal(batch['image'], plain['image'])
  np.testing.assert_array_equal(batch['label'], [0, 0, 1, 1, 0, 1])
  pixels = np.arange(2 * 16 * 16 * 3).reshape(2, 16, 16, 3).astype(np.uint8)
  np.testing.assert_array_equal(encoder_images({'image': batch['image'][:2], 'pixels': pixels}), to_unit_range(pixels))


def test_a_directory_without_pixels_is_refused_then_encoding_adds_them(files, encoded):
  c = repa_config(files, 'plain', repa=False)
  encode_dataset(c, progress=False)
  assert 'pixel_shape' not in read_meta(c.data.path)
  c = repa_config(files, 'plain')
  with pytest.raises(
      ValueError, match=r'config\.repa\.encoder .*config\.data\.path=.*plain holds latents only.*'
      r'python main\.py --mode=encode'):
    train.train_and_evaluate(c, str(files / 'run'))  # at start-up: nothing is written
  assert not os.path.exists(files / 'run')
  latents = {s: os.stat(shard_path(c.data.path, 'latents', s)).st_mtime_ns for s in (0, 1)}
  encode_dataset(c, progress=False)
  assert {s: os.stat(shard_path(c.data.path, 'latents', s)).st_mtime_ns for s in (0, 1)} == latents  # kept
  for s in (0, 1):
    np.testing.assert_array_equal(np.load(shard_path(c.data.path, 'pixels', s)),
                                  np.load(shard_path(encoded.data.path, 'pixels', s)))
  os.remove(shard_path(c.data.path, 'pixels', 1))
  with pytest.raises(FileNotFoundError, match=r'1 of 2 shards .* lack their images.*--mode=encode'):
    create_source(c.data, pixels=True)


def test_repa_steps_on_latents_feed_the_pixels_to_the_encoder(encoded):
  c = encoded.copy_and_resolve_references()
  encoder = DINOv2(width=32, depth=1, num_heads=2, mlp_dim=64)  # a stand-in for DINOv2-S: 4x4 tokens at 56 px
  encoder_params = encoder.init(jax.random.PRNGKey(1), jnp.zeros((1, 56, 56, 3)))['params']
  c.repa.encoder_dim = 32
  seen = []
  dinov2_tokens = dinov2_tokens_fn(encoder, c.repa.encoder_resolution)

  def tokens(params, images):
    seen.append(images.shape)
    return dinov2_tokens(params, images)

  mesh = sharding_lib.create_mesh(c.mesh)
  model, tx = build_model(c), create_optimizer(c.optim)
  _, shardings = state_shardings(c, model, tx, mesh)
  state = create_state(c, model, tx, mesh)
  step_fn = training_step.make_train_step(c, model, tx, mesh, shardings, repa_tokens=tokens)
  batcher = StepBatcher(create_source(c.data, pixels=True), c.train.batch_size, c.seed)
  for step in range(2):
    state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batcher.batch(step), mesh), encoder_params)
    assert -1.0 <= float(metrics['repa_loss']) <= 1.0 and np.isfinite(float(metrics['diffusion_loss']))
    assert float(metrics['loss']) == pytest.approx(
        float(metrics['diffusion_loss']) + 0.5 * float(metrics['repa_loss']), rel=1e-5)
  assert seen == [(8, 16, 16, 3)]  # traced once, on the 16 px images, not the 8x8x4 latents

"""Latent diffusion end to end on CPU: image folder -> tiny VAE -> latent shards -> DiT -> decoded samples."""
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from jobs import edit
from training import sharding as sharding_lib
from jobs import train
from configs.validate import validate_config
from input_pipeline import create_source
from jobs.encode import encode_dataset
from input_pipeline.latents import LatentSource, read_meta, shard_path
from jobs.vae import make_latent_decoder
from models import build_model
from models.vae import TINY_VAE_CONFIG, build_vae, encode_to_latents, init_vae_params
from models.vae_convert import load_vae_params, save_params_msgpack
from jobs.sample import generate_samples, make_generate_fn
from tests.tiny import tiny_unet_config

NUM_PER_CLASS = 5  # 2 classes -> 10 images -> shards of 4, 4, 2


def write_images_and_vae(root, class_names, per_class, seed, band):
  """An image folder of 16x16 RGB images, `per_class` of each class, whose left `band` columns tell the class (so
  flips differ from originals), and a tiny random VAE saved as msgpack beside it; returns root."""
  rng = np.random.default_rng(seed)
  for label, name in enumerate(class_names):
    os.makedirs(root / 'images' / name)
    for i in range(per_class):
      img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
      img[:, :band] = 255 * label
      Image.fromarray(img).save(root / 'images' / name / f'{i}.png')
  vae = build_vae(TINY_VAE_CONFIG)
  save_params_msgpack(init_vae_params(vae, jax.random.PRNGKey(0), image_size=16), str(root / 'tiny_vae.msgpack'))
  return root


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """2 classes of 16x16 RGB images and a tiny random VAE."""
  return write_images_and_vae(tmp_path_factory.mktemp('latents'), ['circles', 'stripes'], NUM_PER_CLASS, seed=0, band=8)


def latent_config(files, out='latents'):
  c = tiny_unet_config()
  c.model = {'name': 'dit', 'patch_size': 2, 'depth': 1, 'hidden_size': 16, 'num_heads': 2, 'mlp_ratio': 2.0}
  c.data.source, c.data.path = 'latents', str(files / out)
  c.data.image_size, c.data.channels, c.data.num_classes = 8, 4, 2
  c.data.vae_weights, c.data.vae_config = str(files / 'tiny_vae.msgpack'), 'tiny'
  c.data.pixels.source, c.data.pixels.path = 'image_folder', str(files / 'images')
  c.data.pixels.image_size, c.data.pixels.channels = 16, 3
  c.encode.batch_size, c.encode.shard_size, c.encode.num_workers = 8, 4, 2
  c.train.batch_size = 8
  c.sample.clip_denoised = False
  return validate_config(c)


@pytest.fixture(scope='module')
def encoded(files):
  c = latent_config(files)
  encode_dataset(c, progress=False)
  return c


def test_encode_writes_shards_labels_and_flipped_copies(files, encoded):
  path = encoded.data.path
  meta = read_meta(path)
  assert meta['count'] == 10 and meta['num_shards'] == 3 and meta['latent_shape'] == [8, 8, 4]
  assert meta['latent_scale'] == pytest.approx(0.18215) and meta['flips'] and meta['classes'] == ['circles', 'stripes']
  assert np.load(shard_path(path, 'latents', 2), mmap_mode='r').shape == (2, 2, 8, 8, 4)
  source = create_source(encoded.data)
  assert isinstance(source, LatentSource) and len(source) == 20  # every image and its mirror image
  batch = source.get(np.array([0, 10, 7, 19]))
  assert batch['image'].dtype == np.dtype(meta['dtype']) and batch['image'].shape == (4, 8, 8, 4)  # cast on device
  np.testing.assert_array_equal(batch['label'], [0, 0, 1, 1])
  one_class = encoded.copy_and_resolve_references()
  one_class.data.num_classes = 1
  with pytest.raises(ValueError, match=r"the latent dataset '.*' has 2 classes but config\.data\.num_classes=1"):
    create_source(one_class.data)
  pixels = create_source(latent_config(files).data.pixels).get(np.array([0]))['image']
  variables = load_vae_params(encoded.data.vae_weights, TINY_VAE_CONFIG)
  expected = encode_to_latents(variables, pixels, config=TINY_VAE_CONFIG)
  expected_flip = encode_to_latents(variables, pixels[:, :, ::-1], config=TINY_VAE_CONFIG)
  np.testing.assert_allclose(batch['image'][0], expected[0], atol=2e-3, rtol=2e-3)  # float16 storage
  np.testing.assert_allclose(batch['image'][1], expected_flip[0], atol=2e-3, rtol=2e-3)
  assert np.abs(batch['image'][0] - batch['image'][1]).max() > 1e-2


def test_train_latent_dit_then_sample_and_decode(encoded, tmp_path):
  c = encoded.copy_and_resolve_references()
  c.train.num_steps = 2
  state = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert int(state.step) == 2
  mesh = sharding_lib.create_mesh(c.mesh)
  images, cond = generate_samples(c, make_generate_fn(c, build_model(c), mesh), state.ema_params, mesh, 8, seed=0)
  assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8  # decoded to pixels by the VAE
  np.testing.assert_array_equal(cond['y'], np.arange(8) % 2)
  pixels = make_latent_decoder(c)(create_source(c.data).get(np.arange(3))['image'])
  assert pixels.shape == (3, 16, 16, 3) and pixels.min() >= -1 and pixels.max() <= 1
  # --mode=edit on the latent model: encoded, inpainted in the latent grid, decoded, the kept pixels pasted back
  mask = np.zeros((16, 16), np.uint8)
  mask[5:11, 5:11] = 255  # repaint the centre: latent pixels 2-5 of 8 (factor 2)
  Image.fromarray(mask).save(tmp_path / 'mask.png')
  path = edit.run_edit_job(c, str(tmp_path / 'run'), c.data.pixels.path, mask=str(tmp_path / 'mask.png'), labels='1')
  with np.load(path) as out:
    edited, inputs, keep = out['arr_0'], out['inputs'], out['keep']
  assert edited.shape == inputs.shape == (10, 16, 16, 3) and keep.sum() == 256 - 36
  np.testing.assert_array_equal(edited[:, keep], inputs[:, keep])
  assert np.abs(edited[:, ~keep].astype(int) - inputs[:, ~keep]).mean() > 5


def test_scale_mismatch_and_missing_files_fail_clearly(files, encoded, tmp_path):
  with pytest.raises(ValueError, match=r'scaled by 0\.18215.*latent_scale=0\.5'):
    LatentSource(encoded.data.path, 8, 4, latent_scale=0.5)
  with pytest.raises(ValueError, match='shape'):
    LatentSource(encoded.data.path, 16, 4)
  with pytest.raises(FileNotFoundError, match='python main.py --mode=encode'):
    LatentSource(str(tmp_path / 'nothing'), 8, 4)
  c = latent_config(files)
  c.data.vae_weights = str(tmp_path / 'missing.msgpack')
  with pytest.raises(FileNotFoundError, match='vae_weights'):
    make_latent_decoder(c)
  c.data.vae_weights = ''
  with pytest.raises(ValueError, match='vae_weights is empty'):
    make_latent_decoder(c)


def test_interrupted_encode_resumes_and_skips_finished_shards(files, encoded):
  path = str(files / 'resumed')
  shutil.copytree(encoded.data.path, path)
  os.remove(shard_path(path, 'latents', 1))  # interrupted while writing shard 1 ...
  open(shard_path(path, 'latents', 1) + '.tmp-0', 'wb').write(b'partial')  # ... leaving a partial temp file
  with pytest.raises(FileNotFoundError, match='incomplete.*resumes'):
    LatentSource(path, 8, 4)
  done = {s: os.stat(shard_path(path, 'latents', s)).st_mtime_ns for s in (0, 2)}
  c = latent_config(files, 'resumed')
  encode_dataset(c, progress=False)
  assert {s: os.stat(shard_path(path, 'latents', s)).st_mtime_ns for s in (0, 2)} == done  # not rewritten
  np.testing.assert_array_equal(np.load(shard_path(path, 'latents', 1)),
                                np.load(shard_path(encoded.data.path, 'latents', 1)))
  assert len(LatentSource(path, 8, 4)) == 20
  c.encode.shard_size = 3
  with pytest.raises(ValueError, match='another encoding.*shard_size'):
    encode_dataset(c, progress=False)

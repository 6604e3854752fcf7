"""--mode=encode: an image dataset -> VAE latent shards in config.data.path (layout in input_pipeline/latents.py).

    python main.py --mode=encode --config=configs/dit_xl.py:2 --workdir=runs/encode_imagenet256

The dataset is config.data.pixels (digits, image_folder or TFDS, at pixels.image_size), the VAE
config.data.vae_weights (converted .msgpack or diffusers .safetensors) with config.data.vae_config.
Images are decoded by `encode.num_workers` threads a few batches ahead; each batch (with its mirror
images, if encode.flips) is encoded by one jitted step with the batch split over this host's devices.
Shards of `encode.shard_size` images are written one at a time (temporary name, then rename; the
latents file last), so an interrupted run resumes where it stopped: complete shards are skipped.
With several hosts, host p encodes the shards s with s % num_hosts == p.

With config.repa.encoder set (REPA, docs/repa.md), or when the directory already holds them, each shard
also stores its images as uint8 at pixels.image_size (`pixels_00000.npy`, once per image: a mirror
entry's are flipped at read). Run with a REPA config on a directory encoded without them, it adds the
images to the complete shards without encoding their latents again.
"""
import concurrent.futures
import collections
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tqdm import tqdm

from input_pipeline import create_source
from input_pipeline import latents as latents_lib
from input_pipeline.files import atomic_write
from jobs.vae import load_vae, vae_config_for
from models.vae import AutoencoderKL, build_vae
from training import sharding as sharding_lib

# meta.json entries that must agree for a run to resume into an existing directory.
RESUME_KEYS = ('format', 'count', 'latent_shape', 'dtype', 'latent_scale', 'flips', 'shard_size', 'num_shards', 'vae',
               'pixels', 'captions')


def pixel_data_config(config):
  """The data config of the dataset to encode (config.data.pixels, with config.data.captions)."""
  pixels = config.data.pixels
  if not pixels.source:
    raise ValueError('config.data.pixels.source is empty: name the image dataset to encode (digits, image_folder '
                     'with config.data.pixels.path, or tfds with config.data.pixels.name)')
  return ml_collections.ConfigDict(
      dict(source=pixels.source, name=pixels.name, split=pixels.split, path=pixels.path, image_size=pixels.image_size,
           channels=pixels.channels, captions=config.data.captions, tfds_data_dir=config.data.tfds_data_dir))


def build_meta(config, count, classes=None):
  vae_config = vae_config_for(config.data.vae_config)
  factor = build_vae(vae_config).downsample_factor
  pixels = config.data.pixels
  if pixels.image_size % factor:
    raise ValueError(f'config.data.pixels.image_size={pixels.image_size} is not divisible by the VAE\'s '
                     f'downsampling factor {factor}')
  shape = [pixels.image_size // factor] * 2 + [vae_config['latent_channels']]
  if (config.data.image_size, config.data.image_size, config.data.channels) != tuple(shape):
    raise ValueError(f'{pixels.image_size}x{pixels.image_size} images give {shape[0]}x{shape[1]}x{shape[2]} '
                     f'latents, but config.data.image_size={config.data.image_size} and '
                     f'config.data.channels={config.data.channels}')
  if pixels.channels != vae_config['in_channels']:
    raise ValueError(f'config.data.pixels.channels={pixels.channels} but the VAE takes '
                     f'{vae_config["in_channels"]} channels')
  shard_size = config.encode.shard_size
  meta = dict(
      format=latents_lib.FORMAT, count=count, latent_shape=shape, dtype=config.encode.dtype,
      latent_scale=float(config.data.latent_scale), flips=bool(config.encode.flips), shard_size=shard_size,
      num_shards=-(-count // shard_size), vae=dict(weights=os.path.basename(os.path.normpath(config.data.vae_weights)),
                                                   config=config.data.vae_config),
      pixels=dict(source=pixels.source, name=pixels.name, split=pixels.split, path=pixels.path,
                  image_size=pixels.image_size), captions=bool(config.data.captions),
      stores='latent_scale * posterior mean')
  if config.repa.encoder:
    meta['pixel_shape'] = [pixels.image_size, pixels.image_size, pixels.channels]
  if classes is not None:
    meta['classes'] = list(classes)
  return meta


def _write_atomic(path, write):
  with atomic_write(path, f'-{jax.process_index()}') as tmp, open(tmp, 'wb') as f:
    write(f)


def write_meta(directory, meta):
  _write_atomic(os.path.join(directory, latents_lib.META_FILE),
                lambda f: f.write(json.dumps(meta, indent=2).encode('utf-8')))


def check_resumable(directory, meta):
  """Raises if `directory` holds latents of another encoding."""
  existing = latents_lib.read_meta(directory)
  if existing is None:
    return
  differs = [k for k in RESUME_KEYS if existing.get(k) != json.loads(json.dumps(meta.get(k)))]
  if differs:
    details = ', '.join(f'{k}: stored {existing.get(k)!r}, now {meta.get(k)!r}' for k in differs)
    raise ValueError(f'{directory} holds latents of another encoding ({details}); delete the directory or set '
                     '--config.data.path to a new one')


def make_encode_fn(config, mesh):
  """jitted (vae variables, images [B, H, W, 3] in [-1, 1]) -> latents [B, V, h, w, c] in the stored dtype."""
  model = build_vae(vae_config_for(config.data.vae_config), jnp.dtype(config.encode.compute_dtype))
  scale, flips, dtype = config.data.latent_scale, config.encode.flips, jnp.dtype(config.encode.dtype)

  def encode(variables, images):
    if flips:  # each image next to its mirror, so every device keeps its own examples
      images = jnp.stack([images, images[:, :, ::-1]], axis=1).reshape((-1,) + images.shape[1:])
    mean, _ = model.apply(variables, images, method=AutoencoderKL.encode)
    latents = (scale * mean).astype(dtype)
    return latents.reshape((-1, 2 if flips else 1) + latents.shape[1:])

  batch = sharding_lib.batch_sharding(mesh)
  return jax.jit(encode, in_shardings=(sharding_lib.replicated(mesh), batch), out_shardings=batch)


def _batches(source, shards, shard_size, count, batch_size, num_workers):
  """Yields (shard, host batch) for each batch of the given shards, loaded by a thread pool ahead of use."""
  plan = [(s, start, min(start + batch_size, (s + 1) * shard_size, count))
          for s in shards
          for start in range(s * shard_size, min((s + 1) * shard_size, count), batch_size)]
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for s, start, stop in plan:
      pending.append((s, pool.submit(source.get, np.arange(start, stop))))
      if len(pending) > num_workers:
        shard, future = pending.popleft()
        yield shard, future.result()
    while pending:
      shard, future = pending.popleft()
      yield shard, future.result()


def encode_dataset(config, progress=True):
  """Encodes config.data.pixels into config.data.path, skipping complete shards; returns the directory."""
  out_dir = config.data.path
  if not out_dir:
    raise ValueError('config.data.path is empty: it names the directory the latents are written to')
  source = create_source(pixel_data_config(config), tokenize=False)
  meta = build_meta(config, len(source),
                    getattr(source, 'classes', None) or getattr(getattr(source, 'source', None), 'classes', None))
  variables = load_vae(config.data.vae_weights, config.data.vae_config)
  os.makedirs(out_dir, exist_ok=True)
  check_resumable(out_dir, meta)
  existing = latents_lib.read_meta(out_dir)
  if existing and existing.get('pixel_shape'):  # keep every shard's images once some are stored
    meta['pixel_shape'] = existing['pixel_shape']
  write_meta(out_dir, meta)

  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}), jax.local_devices())
  encode_fn = make_encode_fn(config, mesh)
  variables = jax.device_put(variables, sharding_lib.replicated(mesh))
  num_devices = mesh.devices.size
  batch_size = -(-config.encode.batch_size // num_devices) * num_devices
  count, shard_size = meta['count'], meta['shard_size']
  mine = [s for s in range(meta['num_shards']) if s % jax.process_count() == jax.process_index()]
  no_latents = set(latents_lib.missing_shards(out_dir, meta))
  no_pixels = set(latents_lib.missing_shards(out_dir, meta, 'pixels')) if 'pixel_shape' in meta else set()
  todo = [s for s in mine if s in no_latents | no_pixels]
  size = lambda s: min(shard_size, count - s * shard_size)
  logging.info('encoding %d images into %s: %d of %d shards to do (%d complete), batch %d on %d devices', count,
               out_dir, len(todo), len(mine),
               len(mine) - len(todo), batch_size, num_devices)
  bar = tqdm(total=sum(size(s) for s in mine), initial=sum(size(s) for s in mine if s not in todo), unit='img',
             desc='encoding', disable=not progress, dynamic_ncols=True)
  buffers = {}
  try:
    for shard, batch in _batches(source, todo, shard_size, count, batch_size, config.encode.num_workers):
      n = len(batch['label'])
      images = np.asarray(batch['image'], np.float32)
      parts = buffers.setdefault(shard, {'latents': [], 'labels': [], 'captions': [], 'pixels': []})
      if 'pixel_shape' in meta:  # the source's images are uint8 / 127.5 - 1: this rounds back to them exactly
        parts['pixels'].append(np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8))
      if shard in no_latents:
        if n < batch_size:
          images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], np.float32)])
        latents = np.asarray(encode_fn(variables, jax.device_put(images, sharding_lib.batch_sharding(mesh))))[:n]
        parts['latents'].append(latents)
      parts['labels'].append(np.asarray(batch['label'], np.int32))
      if meta['captions']:
        parts['captions'].extend(str(c) for c in batch['caption'])
      bar.update(n)
      if sum(len(x) for x in parts['labels']) == size(shard):
        write_shard(out_dir, shard, buffers.pop(shard), meta['captions'])
  finally:
    bar.close()
  return out_dir


def write_shard(directory, shard, parts, captions):
  """Pixels (if stored), labels, captions, then latents (last: its presence marks the shard complete); a shard whose
  latents exist gets only its pixels."""
  if parts['pixels']:
    _write_atomic(latents_lib.shard_path(directory, 'pixels', shard),
                  lambda f: np.save(f, np.concatenate(parts['pixels'])))
  if not parts['latents']:
    return
  _write_atomic(latents_lib.shard_path(directory, 'labels', shard),
                lambda f: np.save(f, np.concatenate(parts['labels'])))
  if captions:
    _write_atomic(latents_lib.shard_path(directory, 'captions', shard),
                  lambda f: f.write(json.dumps(parts['captions']).encode('utf-8')))
  _write_atomic(latents_lib.shard_path(directory, 'latents', shard),
                lambda f: np.save(f, np.concatenate(parts['latents'])))


def run_encode_job(config, workdir=None):
  """--mode=encode. The latents go to config.data.path; workdir is not used."""
  del workdir
  out_dir = encode_dataset(config, progress=jax.process_index() == 0)
  logging.info('latents are in %s; train on them with data.source=latents, data.path=%s', out_dir, out_dir)
  return out_dir

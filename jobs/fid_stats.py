"""--mode=fid_stats: images -> mean and covariance of the FID Inception's pool3 and spatial features -> an
ADM-layout reference npz (`mu`, `sigma`, `mu_s`, `sigma_s`, optionally `arr_0`) for the 'inception' evaluator.

The images are the config's dataset, read by index from its input_pipeline source (not the shuffled, flipped
training stream), or an image folder or an npz (`--images=`), at config.data.image_size (for latent models:
config.data.pixels, the images the latents were encoded from, at their pixel size). An existing output is not
replaced unless --overwrite, and the Inception weights are read before the long part starts.
"""
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from evaluation import inception, inception_convert, inception_metrics
from evaluation.device_batches import local_mesh, replicate
from evaluation.frechet import RunningFeatureStatistics
from evaluation.inception_metrics import extract_features
from input_pipeline import create_source
from input_pipeline.files import atomic_write, load_samples_npz, refuse_existing
from input_pipeline.images import decode_image, image_files, image_mode, to_uint8

SUBSET_SEED = 0
READ_CHUNK = 1000  # images read from a source (and kept in host memory) at a time


def subset_indices(total, num_images):
  """Which of `total` items to use: all (num_images <= 0 or >= total), else a fixed random subset, sorted."""
  if num_images <= 0 or num_images >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(SUBSET_SEED).choice(total, num_images, replace=False))


# --- fid_stats: where the reference images come from ---------------------------------------------------------


def pixel_data_config(data_config):
  """The data config whose images the samples are comparable to: data.pixels for a latent dataset (the
  images --mode=encode encoded), data itself otherwise."""
  if data_config.source != 'latents':
    return data_config
  pixels = data_config.get('pixels')
  if pixels is None or not pixels.get('source'):
    raise ValueError("config.data.source='latents' holds VAE latents, not images, and config.data.pixels.source "
                     'is not set: compute the reference statistics from the images with --images=<folder or npz>')
  return ml_collections.ConfigDict(
      dict(pixels.to_dict(), tfds_data_dir=data_config.get('tfds_data_dir', ''),
           num_workers=data_config.get('num_workers', 1)))


def reference_image_size(data_config):
  """The side of the images the samples are comparable to: data.pixels.image_size for a latent dataset (set
  even where data.pixels.source is not, as when the latents were encoded elsewhere), data.image_size otherwise."""
  return data_config.pixels.image_size if data_config.source == 'latents' else data_config.image_size


def dataset_image_chunks(data_config, num_images=0):
  """uint8 NHWC chunks of the config's dataset in index order (a fixed subset if num_images > 0)."""
  data_config = pixel_data_config(data_config)
  if data_config.get('captions', False):
    # Captioned sources repeat an image once per caption (coco_captions: 5 times), and repeated reference images
    # would give precision/recall 3-NN radii of 0 and weight FID's statistics by caption count: each image once.
    data_config = data_config.copy_and_resolve_references()
    data_config.captions = False
  source = create_source(data_config)
  indices = subset_indices(len(source), num_images)
  description = f'data source {data_config.source!r} ({len(indices)} of {len(source)} images)'
  return (to_uint8(source.get(indices[i:i + READ_CHUNK])['image'])
          for i in range(0, len(indices), READ_CHUNK)), len(indices), description


def npz_image_chunks(path, num_images=0):
  """uint8 NHWC chunks of `arr_0` of an npz."""
  images, _ = load_samples_npz(path)
  indices = subset_indices(len(images), num_images)
  description = f'{path} ({len(indices)} of {len(images)} images)'
  return (images[indices[i:i + READ_CHUNK]] for i in range(0, len(indices), READ_CHUNK)), len(indices), description


def reference_channels(data_config):
  """The channels of the images the samples are comparable to (1: grey), as `reference_image_size`."""
  pixels = data_config.pixels if data_config.source == 'latents' else data_config
  return pixels.get('channels', 3)


def folder_image_chunks(root, image_size, num_images=0, channels=3):
  """uint8 NHWC chunks of the images in a folder (any layout), centre-cropped and resized to image_size and
  converted to `channels` (1: PIL's grey, as the training data is) as `input_pipeline.sources` reads them."""
  files = image_files(root)
  indices = subset_indices(len(files), num_images)
  description = f'{root} ({len(indices)} of {len(files)} images, at {image_size}x{image_size}x{channels})'
  mode = image_mode(channels)
  return (np.stack([decode_image(files[j], mode, image_size)
                    for j in indices[i:i + READ_CHUNK]])
          for i in range(0, len(indices), READ_CHUNK)), len(indices), description


def reference_image_chunks(config, images=None, num_images=0):
  """(chunk iterator, number of images, description) for --images (folder or .npz) or the dataset."""
  if not images:
    return dataset_image_chunks(config.data, num_images)
  if os.path.isdir(images):
    return folder_image_chunks(images, reference_image_size(config.data), num_images, reference_channels(config.data))
  if images.endswith('.npz'):
    return npz_image_chunks(images, num_images)
  raise FileNotFoundError(f'--images={images!r} is neither a folder of images nor an .npz file')


# --- fid_stats: the job ------------------------------------------------------------------------------------


def as_rgb(images):
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def reference_statistics(variables, chunks, total, batch_size, keep_images=False, model=None):
  """({'mu', 'sigma', 'mu_s', 'sigma_s'}, images or None): the mean and covariance of the pool3 and the spatial
  (sFID) features of every chunk of uint8 images."""
  pool3, spatial, kept = RunningFeatureStatistics(), RunningFeatureStatistics(), []
  variables = replicate(variables, local_mesh())  # once, not per chunk
  with tqdm(total=total, desc='FID features', unit='img', disable=jax.process_index() != 0) as bar:
    for chunk in chunks:
      features = extract_features(variables, chunk, batch_size, model)
      pool3.add(features.pool3)
      spatial.add(features.spatial)
      if keep_images:
        kept.append(as_rgb(chunk))
      bar.update(len(chunk))
  statistics = dict(zip(('mu', 'sigma'), pool3.mean_and_covariance()))
  statistics.update(zip(('mu_s', 'sigma_s'), spatial.mean_and_covariance()))
  return statistics, np.concatenate(kept) if keep_images else None


def fid_stats_settings(config, output=None, inception_weights=None):
  """(output path, weights path, batch size, preprocessing): flags first, then config.evals.inception."""
  inception_config = config.evals.get('inception') or {}
  output = output or inception_config.get('reference_npz')
  weights = inception_weights or inception_config.get('inception_weights')
  if not output:
    raise ValueError('where should the statistics go? Pass --output=<path>.npz (or set '
                     'config.evals.inception.reference_npz)')
  if not output.endswith('.npz'):
    raise ValueError(f'--output={output!r} must end in .npz (the ADM reference layout)')
  if not weights:
    raise ValueError('pass --inception_weights=<converted .msgpack> (or set config.evals.inception.'
                     'inception_weights); docs/evaluation.md says how to convert them')
  preprocessing = inception_config.get('preprocessing', 'pytorch_fid')
  return output, weights, inception_config.get('batch_size', 200), preprocessing


def run_fid_stats_job(config, workdir, output=None, images=None, inception_weights=None, num_images=0,
                      keep_images=False, overwrite=False):
  """--mode=fid_stats: writes the ADM-layout reference npz; returns (path, mu, sigma)."""
  del workdir  # the output path is explicit: statistics are shared between runs
  output, weights, batch_size, preprocessing = fid_stats_settings(config, output, inception_weights)
  refuse_existing(output, overwrite, 'choose another --output')
  variables = inception_convert.load_inception_params(weights)
  chunks, total, description = reference_image_chunks(config, images, num_images)
  logging.info('FID reference statistics of %s with %s, batch %d, %s preprocessing', description, weights, batch_size,
               preprocessing)
  start = time.time()
  model = inception.FIDInceptionV3(preprocessing=preprocessing)
  statistics, kept = reference_statistics(variables, chunks, total, min(batch_size, total), keep_images, model)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_write(output, '.npz') as tmp:
      inception_metrics.save_reference_npz(tmp, images=kept, preprocessing=preprocessing, **statistics)
    logging.info('wrote %s: mu, sigma, mu_s, sigma_s%s of %d images in %.0f s', output,
                 ', arr_0' if keep_images else '', total,
                 time.time() - start)
  return output, statistics['mu'], statistics['sigma']

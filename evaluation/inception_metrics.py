"""Metrics on FID Inception outputs: feature extraction, FID, sFID, Inception Score, precision/recall.

Reference statistics use the ADM evaluator's npz layout: `arr_0` uint8 NHWC images and/or `mu`,
`sigma` (pool3 mean and covariance) and `mu_s`, `sigma_s` (those of the spatial features, for sFID).
sFID is the Fréchet distance of the spatial features (evaluation/inception.py), as the ADM evaluator
computes it. Precision/recall follow Kynkäänniemi et al. 2019 (k-NN manifolds on pool3 features,
k = 3), computed in row chunks so 50k x 50k never materialises. Features, distances and ball tests run
on every local device (evaluation/device_batches.py).
"""
import functools
import logging
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from evaluation import device_batches, frechet, inception, inception_convert
from input_pipeline import npz_layout


class Features(NamedTuple):
  """An image set's Inception features, float32 [N, D] each."""
  pool3: np.ndarray  # [N, 2048]: FID, precision/recall
  logits: np.ndarray  # [N, 1008], unbiased: Inception Score
  spatial: np.ndarray  # [N, 2023] (at 299x299): sFID


@functools.partial(jax.jit, static_argnums=0)
def _inception_forward(model, variables, images):
  if images.shape[-1] == 1:  # greyscale, as the digits: the same value in R, G and B
    images = jnp.repeat(images, 3, axis=-1)
  outputs = model.apply(variables, images)
  return Features(outputs.pool3, outputs.logits_unbiased, outputs.spatial)


def extract_features(variables, images, batch_size=200, model=None, mesh=None):
  """`Features` (pool3 [N, 2048], unbiased logits [N, 1008], spatial [N, 2023]) of images in [0, 255].

  images: [N, H, W, 3] (or greyscale [N, H, W, 1]) uint8 or float array (a numpy memmap works); any
  size, resized to 299 inside the network. Each batch is split over the devices of `mesh` (default: all
  of this host's), batch_size rounded up to a multiple of their number; one compilation per
  (batch_size, H, W, dtype): the last batch is padded.
  """
  model = model or inception.FIDInceptionV3()
  if len(images) == 0:
    raise ValueError('no images to extract features from')
  mesh = mesh or device_batches.local_mesh()
  variables = device_batches.replicate(variables, mesh)
  features = device_batches.map_batches(functools.partial(_inception_forward, model, variables), images, batch_size,
                                        mesh)
  return Features(*(f.astype(np.float32) for f in features))


def inception_score(logits, splits=10):
  """(mean, std) over `splits` chunks of exp(E_x KL(p(y|x) || p(y))), p = softmax(logits).

  Pass the unbiased logits (pool3 @ fc kernel over the 1008 classes), as the original TF code
  (improved-GAN, ADM evaluator) does. Chunks are [i N // splits, (i + 1) N // splits).
  """
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  n = len(log_p)
  if n < splits:
    raise ValueError(f'need at least splits={splits} samples, got {n}')
  scores = []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0))
    kl = (p * (part - log_marginal)).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def _squared_distances(rows, data):
  """[R, N] squared Euclidean distances, float32 with full-precision matmul, clipped at 0."""
  cross = jnp.dot(rows, data.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.sum(rows * rows, axis=1)[:, None] - 2 * cross + jnp.sum(data * data, axis=1)[None]
  return jnp.maximum(sq, 0.0)


@functools.partial(jax.jit, static_argnames='k')
def _kth_neighbour_sq_distance(rows, data, k):
  """Squared distance to the k-th nearest point of `data`, the row itself (distance 0) being 0th."""
  neg_nearest, _ = jax.lax.top_k(-_squared_distances(rows, data), k + 1)
  return -neg_nearest[:, k]


@jax.jit
def _inside_any_ball(rows, centres, sq_radii):
  return jnp.any(_squared_distances(rows, centres) <= sq_radii[None], axis=1)


def manifold_sq_radii(features, k=3, chunk_size=1000):
  """Squared k-NN radius of every point within its own set (Kynkäänniemi et al.)."""
  if len(features) <= k:
    raise ValueError(f'need more than k={k} points, got {len(features)}')
  mesh = device_batches.local_mesh()
  features = np.asarray(features, np.float32)
  everyone = device_batches.replicate(features, mesh)
  return device_batches.map_batches(lambda rows: _kth_neighbour_sq_distance(rows, everyone, k=k), features, chunk_size,
                                    mesh)


def fraction_inside_manifold(points, centres, sq_radii, chunk_size=1000):
  """Fraction of points within the k-NN ball of at least one centre."""
  mesh = device_batches.local_mesh()
  centres, sq_radii = device_batches.replicate((np.asarray(centres, np.float32), np.asarray(sq_radii, np.float32)),
                                               mesh)
  inside = device_batches.map_batches(lambda rows: _inside_any_ball(rows, centres, sq_radii),
                                      np.asarray(points, np.float32), chunk_size, mesh)
  return float(inside.mean())


def precision_recall(real_features, fake_features, k=3, chunk_size=1000):
  """(precision, recall): the fraction of fakes inside the real k-NN manifold and vice versa.

  Memory is O(chunk_size x N) per step, so 50k x 2048 feature sets are fine.
  """
  real_sq_radii = manifold_sq_radii(real_features, k, chunk_size)
  fake_sq_radii = manifold_sq_radii(fake_features, k, chunk_size)
  precision = fraction_inside_manifold(fake_features, real_features, real_sq_radii, chunk_size)
  recall = fraction_inside_manifold(real_features, fake_features, fake_sq_radii, chunk_size)
  return precision, recall


def save_reference_npz(path, mu, sigma, images=None, mu_s=None, sigma_s=None, preprocessing=None):
  """Write reference statistics in the ADM evaluator layout (`mu`, `sigma`, optional `arr_0`, and the
  spatial `mu_s`, `sigma_s` when given), with the Inception preprocessing they were computed with
  (`preprocessing`, a string the ADM evaluator ignores) when given."""
  arrays = {'mu': np.asarray(mu, np.float64), 'sigma': np.asarray(sigma, np.float64)}
  if preprocessing is not None:
    arrays['preprocessing'] = np.asarray(preprocessing)
  if (mu_s is None) != (sigma_s is None):
    raise ValueError('give both mu_s and sigma_s (the spatial statistics), or neither')
  if mu_s is not None:
    arrays.update(mu_s=np.asarray(mu_s, np.float64), sigma_s=np.asarray(sigma_s, np.float64))
  if images is not None:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'arr_0 must be uint8 NHWC RGB images, got {images.dtype} {images.shape}')
    arrays['arr_0'] = images
  np.savez(path, **arrays)


def write_reference_npz(path, variables, images, batch_size=200, keep_images=False, model=None):
  """Compute the pool3 and spatial statistics of uint8 NHWC images and save them (with the images if asked);
  returns the pool3 (mu, sigma)."""
  model = model or inception.FIDInceptionV3()
  features = extract_features(variables, images, batch_size, model)
  mu, sigma = frechet.feature_statistics(features.pool3)
  mu_s, sigma_s = frechet.feature_statistics(features.spatial)
  save_reference_npz(path, mu, sigma, images if keep_images else None, mu_s, sigma_s, model.preprocessing)
  return mu, sigma


def _npz_keys(path):
  with np.load(path) as data:
    return set(data.files)


def _stored_statistics(data, keys):
  """The statistics pairs an npz holds whole: {'mu', 'sigma'} and/or {'mu_s', 'sigma_s'}."""
  out = {}
  for pair in (('mu', 'sigma'), ('mu_s', 'sigma_s')):
    if set(pair) <= keys:
      out.update({k: data[k] for k in pair})
  return out


def load_reference(path, variables=None, batch_size=200, model=None, need_features=False):
  """Reference {'mu', 'sigma'}, {'mu_s', 'sigma_s'} when known, and 'pool3' when computed, from an ADM-style npz.

  Stored statistics take precedence (and `arr_0` is then not read unless need_features); features are
  computed from `arr_0` with `variables` when there are no stored `mu`/`sigma` or need_features=True
  (precision/recall needs the real features). The spatial statistics (sFID) are the stored ones, else those
  of the computed features, else absent.
  """
  with np.load(path) as data:
    keys = set(data.files)
    stored = _stored_statistics(data, keys)
    if 'mu' in stored and not need_features:
      return stored
    if 'arr_0' not in keys:
      wanted = "'arr_0' (uint8 NHWC images)" if need_features else "'mu' and 'sigma', or 'arr_0'"
      raise ValueError(f'{path}: need {wanted}; the file has {sorted(keys)}')
    if variables is None:
      raise ValueError(f'{path}: computing features from arr_0 needs the Inception variables')
    images = data['arr_0']
  features = extract_features(variables, images, batch_size, model)
  computed = dict(zip(('mu', 'sigma'), frechet.feature_statistics(features.pool3)))
  computed.update(zip(('mu_s', 'sigma_s'), frechet.feature_statistics(features.spatial)))
  return {**computed, **stored, 'pool3': features.pool3}


def metrics_against_reference(variables, images, reference, batch_size=200, k=3, is_splits=10, model=None):
  """FID and Inception Score of samples, sFID when `reference` holds 'mu_s'/'sigma_s', and precision/recall
  when it holds 'pool3' features.

  reference: what `load_reference` returns.
  """
  features = extract_features(variables, images, batch_size, model)
  mu, sigma = frechet.feature_statistics(features.pool3)
  is_mean, is_std = inception_score(features.logits, is_splits)
  metrics = {
      'fid': frechet.frechet_distance(mu, sigma, reference['mu'], reference['sigma']), 'inception_score': is_mean,
      'inception_score_std': is_std
  }
  if 'mu_s' in reference:
    metrics['sfid'] = frechet.frechet_distance(*frechet.feature_statistics(features.spatial), reference['mu_s'],
                                               reference['sigma_s'])
  if 'pool3' in reference:
    metrics['precision'], metrics['recall'] = precision_recall(reference['pool3'], features.pool3, k)
  return metrics


def evaluate_samples(variables, images, reference_path, batch_size=200, with_precision_recall=True, k=3, is_splits=10,
                     model=None):
  """FID, sFID, Inception Score and (when the reference has `arr_0`) precision/recall of samples.

  images: [N, H, W, 3] uint8 (or float in [0, 255]) samples; reference_path: ADM-style npz.
  """
  want_pr = with_precision_recall and 'arr_0' in _npz_keys(reference_path)
  reference = load_reference(reference_path, variables, batch_size, model, need_features=want_pr)
  return metrics_against_reference(variables, images, reference, batch_size, k, is_splits, model)


def check_reference_npz(path, preprocessing=None):
  """Raises a clear error unless `path` is an ADM-style npz with `mu`/`sigma` or `arr_0` whose statistics (if
  tagged) were computed with `preprocessing` (if given); returns its keys."""
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(
        f'FID reference statistics {path!r} not found. Compute them from the training data with '
        f'`python main.py --mode=fid_stats --config=<config> --workdir=<dir> --output={path or "<ref>.npz"}` '
        '(or from an image folder / npz with --images=...), or use an ADM reference batch (VIRTUAL_*.npz).')
  npz_layout.check_npz(path, "FID reference statistics need 'mu' and 'sigma', or 'arr_0' (uint8 NHWC images)")
  keys = _npz_keys(path)
  if not ({'mu', 'sigma'} <= keys or 'arr_0' in keys):
    raise ValueError(f"{path}: not FID reference statistics (need 'mu' and 'sigma', or 'arr_0'); "
                     f'the file has {sorted(keys)}')
  if 'arr_0' in keys:  # the reference images (precision/recall, and the statistics when none are stored)
    shape, dtype = npz_layout.member_header(path, 'arr_0')
    error = npz_layout.image_layout_error(dtype, shape)
    if error:
      raise ValueError(f"{path}: its 'arr_0' is not reference images in the ADM layout: {error}")
  if preprocessing is not None and 'preprocessing' in keys and {'mu', 'sigma'} <= keys:
    with np.load(path) as data:
      stored = str(data['preprocessing'])
    if stored != preprocessing:
      raise ValueError(f'{path} holds statistics of images preprocessed as {stored!r}, but this evaluator '
                       f'preprocesses as {preprocessing!r}: the FID would compare unlike features. Set '
                       f'config.evals.inception.preprocessing={stored!r}, or recompute the reference with '
                       f'--mode=fid_stats and preprocessing={preprocessing!r}')
  return keys


class InceptionEvaluator:
  """`config.evals.inception`: FID / sFID / IS / precision-recall against an ADM-style reference npz.

  eval_config: inception_weights (converted .msgpack, or the .pth with torch), reference_npz, optional
  batch_size (200), precision_recall (True; needs `arr_0` images in the reference), k (3), is_splits (10),
  preprocessing ('pytorch_fid', or 'tensorflow' as the ADM evaluator: evaluation/inception.py).
  Both files are checked when the evaluator is built; the reference is read (and its features computed,
  for precision/recall) on the first call and kept. Greyscale samples are replicated to RGB.
  """
  def __init__(self, config, eval_config):
    del config
    for field in ('inception_weights', 'reference_npz'):
      if not eval_config.get(field):
        raise ValueError(f'config.evals.inception.{field} is not set')
    self.variables = device_batches.replicate(inception_convert.load_inception_params(eval_config.inception_weights),
                                              device_batches.local_mesh())
    self.model = inception.FIDInceptionV3(preprocessing=eval_config.get('preprocessing', 'pytorch_fid'))
    self.reference_npz = eval_config.reference_npz
    keys = check_reference_npz(self.reference_npz, self.model.preprocessing)
    self.with_precision_recall = eval_config.get('precision_recall', True) and 'arr_0' in keys
    if eval_config.get('precision_recall', True) and not self.with_precision_recall:
      logging.warning('%s holds no arr_0 images: precision/recall skipped (fid_stats --keep_images stores them)',
                      self.reference_npz)
    if not {'mu_s', 'sigma_s'} <= keys and {'mu', 'sigma'} <= keys and not self.with_precision_recall:
      logging.warning('%s holds no spatial statistics (mu_s, sigma_s): sFID skipped (--mode=fid_stats writes them)',
                      self.reference_npz)
    self.batch_size = eval_config.get('batch_size', 200)
    self.k, self.is_splits = eval_config.get('k', 3), eval_config.get('is_splits', 10)
    self._reference = None

  def reference(self):
    if self._reference is None:
      self._reference = load_reference(self.reference_npz, self.variables, self.batch_size, self.model,
                                       need_features=self.with_precision_recall)
    return self._reference

  def __call__(self, images_uint8, cond=None):
    del cond
    batch_size = min(self.batch_size, len(images_uint8))  # no padding of a few samples to a large batch
    return metrics_against_reference(self.variables, images_uint8, self.reference(), batch_size, self.k, self.is_splits,
                                     self.model)

"""The jobs behind `main.py --mode=eval` and `main.py --mode=fid_stats`.

eval: samples -> every evaluator in config.evals (whatever their every_steps) -> <workdir>/eval/<name>.json,
TensorBoard and <workdir>/metrics.jsonl. The samples are an ADM-layout npz (`arr_0` uint8 NHWC, `arr_1`
labels, optionally `prompts` captions), or are drawn fresh from the newest checkpoint with config.sample's
settings (sampler, steps, guidance, num_samples, seed), exactly as `--mode=sample` would draw them.

fid_stats: images -> mean and covariance of the FID Inception's pool3 and spatial features -> an ADM-layout
reference npz (`mu`, `sigma`, `mu_s`, `sigma_s`, optionally `arr_0`) for the 'inception' evaluator. The
images are the config's dataset, read by index from its input_pipeline source (not the shuffled, flipped
training stream), or an image folder or an npz (`--images=`), at config.data.image_size (for latent
models: config.data.pixels, the images the latents were encoded from, at their pixel size).

Both jobs refuse to replace an existing output unless asked (--overwrite), and check every weight file
before the long part starts.
"""
import datetime
import json
import logging
import os
import time

import ml_collections
import numpy as np

from evaluation import npz_layout

EVAL_DIR = 'eval'
SUBSET_SEED = 0
READ_CHUNK = 1000  # images read from a source (and kept in host memory) at a time


# --- shared ------------------------------------------------------------------------------------------------

def refuse_existing(path, overwrite, hint):
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} exists; pass --overwrite to replace it, or {hint}')


def check_images(images, where):
  """Raises unless `images` is uint8 [N, H, W, C] with C = 1 or 3 and N > 0."""
  error = npz_layout.image_layout_error(images.dtype, images.shape)
  if error:
    raise ValueError(f'{where}: {error}')


def subset_indices(total, num_images):
  """Which of `total` items to use: all (num_images <= 0 or >= total), else a fixed random subset, sorted."""
  if num_images <= 0 or num_images >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(SUBSET_SEED).choice(total, num_images, replace=False))


def is_main_process():
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


# --- eval --------------------------------------------------------------------------------------------------

def create_evaluators(config):
  """{name: evaluator} for every entry of config.evals; missing weight or reference files fail here."""
  from evaluation import create_evaluator  # pylint: disable=import-outside-toplevel
  if not config.evals:
    raise ValueError('config.evals is empty, so there is nothing to evaluate: add an evaluator to the config, '
                     "e.g. c.evals.digits = ml_collections.ConfigDict({'num_samples': 1000}) (docs/evaluation.md)")
  return {name: create_evaluator(name, config, eval_config) for name, eval_config in config.evals.items()}


def load_samples_npz(path):
  """(images, cond) from an ADM-layout npz: `arr_0` uint8 NHWC; `arr_1` labels -> cond['y'] and a str array
  `prompts` -> cond['prompts'] when present."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path!r}: no such npz file (--mode=sample writes one)')
  npz_layout.check_npz(path, "samples need 'arr_0', uint8 NHWC images (as --mode=sample writes)")
  with np.load(path) as data:
    if 'arr_0' not in data.files:
      raise ValueError(f"{path}: no 'arr_0' (uint8 NHWC images); the file has {sorted(data.files)}")
    images = data['arr_0']
    cond = {}
    if 'arr_1' in data.files:
      cond['y'] = data['arr_1'].astype(np.int32)
    if 'prompts' in data.files:
      cond['prompts'] = data['prompts']
  check_images(images, path)
  for key, value in cond.items():
    if len(value) != len(images):
      raise ValueError(f"{path}: {len(images)} images but {len(value)} entries in cond['{key}']")
  return images, cond


def eval_result_path(workdir, name):
  return os.path.join(workdir, EVAL_DIR, f'{name}.json')


def samples_from_checkpoint(config, model, params, mesh):
  """config.sample.num_samples images drawn as `--mode=sample` draws them, and their conditions."""
  from sample import generate_samples, load_classifier, make_generate_fn  # pylint: disable=import-outside-toplevel
  generate_fn = make_generate_fn(config, model, mesh, load_classifier(config))
  return generate_samples(config, generate_fn, params, mesh, config.sample.num_samples, config.sample.seed,
                          progress=True)


def evaluate_all(evaluators, images, cond):
  """(flat {metric: float}, {evaluator name: seconds}); two evaluators giving one metric name is an error."""
  metrics, seconds = {}, {}
  for name, evaluator in evaluators.items():
    start = time.time()
    result = evaluator(images, cond)
    seconds[name] = time.time() - start
    clash = set(result) & set(metrics)
    if clash:
      raise ValueError(f'evaluator {name!r} reports {sorted(clash)}, which another evaluator reported too')
    metrics.update({key: float(value) for key, value in result.items()})
    logging.info('%s: %s (%.1f s)', name, ', '.join(f'{k}={v:.6g}' for k, v in sorted(result.items())),
                 seconds[name])
  return metrics, seconds


def write_json(path, record):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def write_eval_scalars(workdir, step, metrics, seconds):
  """`eval/<metric>` and `eval/<evaluator>_seconds` at `step`, the tags training uses, to TensorBoard and
  metrics.jsonl."""
  from writers import create_writer  # pylint: disable=import-outside-toplevel
  writer = create_writer(workdir)
  try:
    writer.write_scalars(step, {**{f'eval/{k}': v for k, v in metrics.items()},
                                **{f'eval/{k}_seconds': v for k, v in seconds.items()}})
    writer.flush()
  finally:
    writer.close()


def run_eval_job(config, workdir, samples=None, name=None, overwrite=False):
  """--mode=eval: evaluates `samples` (an npz) or fresh samples of the newest checkpoint; returns the record.

  The result goes to <workdir>/eval/<name>.json, name defaulting to the npz's file name without extension,
  or to step_<checkpoint step> for fresh samples (step_<snapshot step>_ema<sigma_rel> for a post-hoc EMA); scalars are written at the checkpoint's step (0 for an npz).
  """
  hint = '--eval_name=<another name>'
  if samples:
    name = name or os.path.splitext(os.path.basename(samples))[0]
  if name:
    refuse_existing(eval_result_path(workdir, name), overwrite, hint)
  evaluators = create_evaluators(config)
  if samples:
    images, cond = load_samples_npz(samples)
    step, origin = 0, {'samples': os.path.abspath(samples)}
  else:
    from train import restore_for_inference  # pylint: disable=import-outside-toplevel
    model, params, step, mesh = restore_for_inference(config, workdir, use_ema=config.sample.use_ema)
    sigma_rel = config.sample.ema_sigma_rel  # a post-hoc EMA (ema.py) of that width, at snapshot `step`
    name = name or f'step_{step:08d}' + (f'_ema{sigma_rel:g}' if sigma_rel else '')
    refuse_existing(eval_result_path(workdir, name), overwrite, hint)
    logging.info('sampling %d images with %s, %d steps, guidance %.2f, from the checkpoint of step %d',
                 config.sample.num_samples, config.sample.sampler, config.sample.num_steps,
                 config.sample.guidance_scale, step)
    images, cond = samples_from_checkpoint(config, model, params, mesh)
    origin = {'checkpoint_step': int(step), 'sample_config': config.sample.to_dict()}
  metrics, seconds = evaluate_all(evaluators, images, cond)
  record = {'name': name, 'metrics': metrics, 'seconds': seconds, 'num_samples': int(len(images)),
            'image_shape': list(images.shape[1:]), 'evals': config.evals.to_dict(),
            'written': datetime.datetime.now().isoformat(timespec='seconds'), **origin}
  if is_main_process():
    path = eval_result_path(workdir, name)
    write_json(path, record)
    write_eval_scalars(workdir, step, metrics, seconds)
    logging.info('wrote %s', path)
  return record


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
  return ml_collections.ConfigDict(dict(pixels.to_dict(), tfds_data_dir=data_config.get('tfds_data_dir', ''),
                                        num_workers=data_config.get('num_workers', 1)))


def reference_image_size(data_config):
  """The side of the images the samples are comparable to: data.pixels.image_size for a latent dataset (set
  even where data.pixels.source is not, as when the latents were encoded elsewhere), data.image_size otherwise."""
  return data_config.pixels.image_size if data_config.source == 'latents' else data_config.image_size


def dataset_image_chunks(data_config, num_images=0):
  """uint8 NHWC chunks of the config's dataset in index order (a fixed subset if num_images > 0)."""
  from input_pipeline import create_source  # pylint: disable=import-outside-toplevel
  from sample import to_uint8  # pylint: disable=import-outside-toplevel
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


def image_files(root):
  """Every image file under root (recursively), sorted."""
  from input_pipeline.sources import IMAGE_EXTENSIONS  # pylint: disable=import-outside-toplevel
  files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f'--images={root!r} holds no image files ({", ".join(IMAGE_EXTENSIONS)})')
  return files


def reference_channels(data_config):
  """The channels of the images the samples are comparable to (1: grey), as `reference_image_size`."""
  pixels = data_config.pixels if data_config.source == 'latents' else data_config
  return pixels.get('channels', 3)


def folder_image_chunks(root, image_size, num_images=0, channels=3):
  """uint8 NHWC chunks of the images in a folder (any layout), centre-cropped and resized to image_size and
  converted to `channels` (1: PIL's grey, as the training data is) as `input_pipeline.sources` reads them."""
  from input_pipeline.sources import decode_image, image_mode  # pylint: disable=import-outside-toplevel
  files = image_files(root)
  indices = subset_indices(len(files), num_images)
  description = f'{root} ({len(indices)} of {len(files)} images, at {image_size}x{image_size}x{channels})'
  mode = image_mode(channels)
  return (np.stack([decode_image(files[j], mode, image_size) for j in indices[i:i + READ_CHUNK]])
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
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from evaluation.frechet import RunningFeatureStatistics  # pylint: disable=import-outside-toplevel
  from evaluation.inception_metrics import extract_features  # pylint: disable=import-outside-toplevel
  from evaluation.device_batches import local_mesh, replicate  # pylint: disable=import-outside-toplevel
  pool3, spatial, kept = RunningFeatureStatistics(), RunningFeatureStatistics(), []
  variables = replicate(variables, local_mesh())  # once, not per chunk
  with tqdm(total=total, desc='FID features', unit='img', disable=not is_main_process()) as bar:
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
  from evaluation import inception, inception_convert, inception_metrics  # pylint: disable=import-outside-toplevel
  output, weights, batch_size, preprocessing = fid_stats_settings(config, output, inception_weights)
  refuse_existing(output, overwrite, 'choose another --output')
  variables = inception_convert.load_inception_params(weights)
  chunks, total, description = reference_image_chunks(config, images, num_images)
  logging.info('FID reference statistics of %s with %s, batch %d, %s preprocessing', description, weights,
               batch_size, preprocessing)
  start = time.time()
  model = inception.FIDInceptionV3(preprocessing=preprocessing)
  statistics, kept = reference_statistics(variables, chunks, total, min(batch_size, total), keep_images, model)
  if is_main_process():
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output[:-len('.npz')] + '.tmp.npz'
    inception_metrics.save_reference_npz(tmp, images=kept, preprocessing=preprocessing, **statistics)
    os.replace(tmp, output)
    logging.info('wrote %s: mu, sigma, mu_s, sigma_s%s of %d images in %.0f s', output,
                 ', arr_0' if keep_images else '', total, time.time() - start)
  return output, statistics['mu'], statistics['sigma']

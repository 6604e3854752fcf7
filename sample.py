"""Generation from a model: the jitted sampling function, image conversion, grids and the sample job."""
import logging
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import sharding as sharding_lib
from diffusion.classifier_guidance import log_prob_gradient
from diffusion.guidance import classifier_free_guidance
from diffusion.samplers import run_sampler
from diffusion.schedules import alphas_cumprod_for
from models.conditioning import default_conditions, is_classifier, model_condition, null_condition, uses_labels


def initial_noise(seed, start_index, count, shape):
  """Noise of sample i depends only on (seed, i): the same samples whatever the batch or device count."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(
      jnp.arange(start_index, start_index + count))
  return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


class SamplingClassifier(NamedTuple):
  """A noisy classifier that guides sampling (load_classifier)."""
  model: Any
  params: Any
  num_classes: int


def load_classifier(config):
  """The classifier of config.sample.classifier_workdir (its config.json and newest checkpoint's EMA params), or
  None when that field is empty. Refuses one that does not read this model's images and timesteps."""
  workdir = config.sample.get('classifier_workdir', '')
  if not workdir:
    return None
  from configs.common import config_from_json  # pylint: disable=import-outside-toplevel
  from train import restore_for_inference  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.sample.classifier_workdir={workdir}: no config.json there; train a classifier '
                            'in it (--config=configs/digits_classifier.py, configs/adm_classifier.py) or import one '
                            '(--mode=import --config=configs/adm_classifier.py:256 --weights=256x256_classifier.pt)')
  cls_config = config_from_json(path)
  where = f'config.sample.classifier_workdir={workdir}'
  if not is_classifier(cls_config):
    raise ValueError(f'{where} holds a {cls_config.model.name!r} model, not a classifier (e.g. adm_classifier)')
  for field in ('data.image_size', 'data.channels', 'diffusion.num_timesteps'):
    section, name = field.split('.')
    if cls_config[section][name] != config[section][name]:
      raise ValueError(f'{where} holds a classifier with {field}={cls_config[section][name]}, this model has '
                       f'{config[section][name]}: it must read the same images at the same timesteps')
  if not np.allclose(alphas_cumprod_for(cls_config), alphas_cumprod_for(config), rtol=1e-5, atol=0):
    raise ValueError(f'{where} holds a classifier trained on the {cls_config.diffusion.schedule!r} noise schedule, '
                     f'this model uses {config.diffusion.schedule!r} (or other betas): at a timestep the two mean '
                     'different noise levels. Use a classifier of this schedule (or correct diffusion.* in its '
                     'config.json if that file is wrong)')
  classes = cls_config.data.num_classes
  if uses_labels(config) and classes != config.data.num_classes:
    raise ValueError(f'{where} holds a classifier of {classes} classes, this model is conditioned on '
                     f'{config.data.num_classes}: the labels must be the same')
  model, params, step, _ = restore_for_inference(cls_config, workdir, use_ema=cls_config.sample.use_ema)
  logging.info('classifier guidance: scale %g, %s of %d classes from step %d of %s', config.sample.classifier_scale,
               cls_config.model.name, classes, step, workdir)
  return SamplingClassifier(model, params, classes)


def make_generate_fn(config, model, mesh, classifier=None):
  """jitted generate(params, cond, noise, rng, guidance_scale) -> samples in the data space.

  Guidance is on when the model is conditional; its scale is a traced argument, so sweeping it
  reuses one compilation. config.sample.guidance_interval = (lo, hi) limits it to those network times.
  classifier (a SamplingClassifier) adds classifier guidance towards cond['y'] at config.sample.classifier_scale,
  for unconditional models too; the returned function then has `classifier_classes`, for generate_samples.
  """
  alphas_cumprod = alphas_cumprod_for(config)
  objective = config.diffusion.objective
  interval = tuple(config.sample.get('guidance_interval', ())) or None
  batch_sharding = sharding_lib.batch_sharding(mesh)

  learn_sigma = config.diffusion.get('learn_sigma', False)

  def generate(params, classifier_inputs, cond, noise, rng, guidance_scale):
    def apply(x, t, c):
      return model.apply({'params': params}, x, t, **c)
    gradient = None
    if classifier is not None:
      classifier_params, classifier_scale = classifier_inputs  # the scale traced: sweeping it does not recompile
      classify = lambda x, t: classifier.model.apply({'params': classifier_params}, x, t)
      gradient = log_prob_gradient(classify, cond['y'], classifier_scale)
      if not uses_labels(config):  # the labels are the classifier's only
        cond = {k: v for k, v in cond.items() if k != 'y'}
    if cond:
      model_fn = classifier_free_guidance(apply, cond, null_condition(cond, config), guidance_scale, interval,
                                          learned_variance=learn_sigma,
                                          channels=config.sample.get('guidance_channels', 0) or None)
    else:
      model_fn = lambda x, t: apply(x, t, cond)
    return run_sampler(config.sample, objective, alphas_cumprod, model_fn, noise, rng,
                       config.diffusion.get('preconditioning', 'none'), config.diffusion.get('sigma_data', 0.5),
                       learn_sigma, gradient)

  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(generate, in_shardings=(None, None, batch_sharding, batch_sharding, replicated, replicated),
                   out_shardings=batch_sharding)
  classifier_inputs = None if classifier is None else (classifier.params,
                                                       np.float32(config.sample.classifier_scale))

  def generate_fn(params, cond, noise, rng, guidance_scale):
    return jitted(params, classifier_inputs, cond, noise, rng, guidance_scale)

  def compile_for(params, cond, noise, rng, guidance_scale):
    """generate_fn compiled ahead of time for these shapes (to time compilation apart from sampling)."""
    compiled = jitted.lower(params, classifier_inputs, cond, noise, rng, guidance_scale).compile()
    return lambda params, cond, noise, rng, scale: compiled(params, classifier_inputs, cond, noise, rng, scale)
  generate_fn.compile_for = compile_for
  generate_fn.classifier_classes = 0 if classifier is None else classifier.num_classes
  return generate_fn


def to_uint8(images):
  """[-1, 1] floats -> uint8 [0, 255], channels kept (the evaluators repeat a single channel to RGB)."""
  images = np.asarray(images, np.float32)
  finite = np.isfinite(images)
  if not finite.all():  # as uint8 they would pass for black pixels
    raise FloatingPointError(f'{finite.size - finite.sum()} of {finite.size} sampled values are not finite (NaN or '
                             'inf): the sampler diverged. Check config.sample (sampler, num_steps, eta, '
                             'guidance_scale) and that the checkpoint was trained without non-finite updates')
  return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def generate_samples(config, generate_fn, params, mesh, num_samples, seed, cond=None, batch_size=None,
                     guidance_scale=None, progress=False):
  """num_samples images (uint8 NHWC) and their conditions (numpy dict), in batches of at most batch_size.

  cond defaults to every class equally often (models.conditioning.default_conditions; with a guiding classifier,
  its classes for unconditional models). Only the model's inputs (models.conditioning.model_condition) and a
  guiding classifier's labels go to generate_fn; the returned dict is the whole cond, prompt strings included.
  """
  num_devices = mesh.devices.size
  batch_size = min(batch_size or config.sample.batch_size, num_samples)
  batch_size = -(-batch_size // num_devices) * num_devices  # a multiple of the mesh size
  cond = default_conditions(num_samples, config) if cond is None else cond
  model_cond = {k: np.asarray(v) for k, v in model_condition(cond, config).items()}
  classes = getattr(generate_fn, 'classifier_classes', 0)
  if classes:
    cond = {**cond, 'y': cond.get('y', np.arange(num_samples, dtype=np.int32) % classes)}
    model_cond['y'] = np.asarray(cond['y'])
  scale = config.sample.guidance_scale if guidance_scale is None else guidance_scale
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  decode = latent_decoder(config)
  out = []
  starts = range(0, num_samples, batch_size)
  if progress:
    from tqdm import tqdm
    starts = tqdm(starts, desc='sampling', unit='batch')
  for start in starts:
    count = min(batch_size, num_samples - start)
    pad = batch_size - count
    batch_cond = {k: np.pad(v[start:start + count], [(0, pad)] + [(0, 0)] * (v.ndim - 1))
                  for k, v in model_cond.items()}
    noise = np.asarray(initial_noise(seed, start, batch_size, shape))
    batch_cond, noise = sharding_lib.shared_batch_to_global((batch_cond, noise), mesh)  # same on every host
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1_000_000_007 + start)
    x = generate_fn(params, batch_cond, noise, rng, jnp.float32(scale))
    out.append(decode(gather_to_host(x)[:count]))
  return np.concatenate(out), {k: v[:num_samples] for k, v in cond.items()}


def gather_to_host(x):
  """A global array as numpy on every host (multi-host arrays are not addressable from one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def latent_decoder(config):
  """Maps sampler outputs to [-1, 1] pixels -> uint8; latent models decode through the VAE first."""
  if config.data.source != 'latents':
    return to_uint8
  from input_pipeline.latents import make_latent_decoder
  decode = make_latent_decoder(config)
  return lambda z: to_uint8(decode(z))


def image_grid(images, columns=None):
  """[N, H, W, C] uint8 -> one [rows*H, columns*W, 3] uint8 image with 2-pixel gaps."""
  n, h, w, c = images.shape
  if c == 1:
    images = np.repeat(images, 3, axis=-1)
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, columns)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = img
  return grid


def write_png(path, image, min_side=512):
  """Writes an RGB uint8 image, upscaled by an integer factor (nearest) so small samples are visible."""
  from PIL import Image
  factor = max(1, min_side // min(image.shape[:2]))
  img = Image.fromarray(image)
  if factor > 1:
    img = img.resize((image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST)
  tmp = path + '.tmp.png'
  img.save(tmp)
  os.replace(tmp, path)


def write_npz(path, images, labels, prompts=None):
  """ADM evaluator layout: arr_0 uint8 NHWC, arr_1 labels (and `prompts`, a str array, for text models).
  Written to a temporary file, then renamed."""
  tmp = path + '.tmp.npz'
  extra = {} if prompts is None else {'prompts': np.asarray(prompts, str)}
  np.savez(tmp, arr_0=images, arr_1=labels, **extra)
  os.replace(tmp, path)


def run_sample_job(config, workdir, overwrite=False):
  """--mode=sample: the latest checkpoint's (EMA) parameters -> npz of samples + PNG grid."""
  from train import restore_for_inference  # the model and state come from the training code
  out_path = os.path.join(workdir, config.sample.output)
  grid_path = os.path.splitext(out_path)[0] + '_grid.png'
  for path in (out_path, grid_path):
    if os.path.exists(path) and not overwrite:
      raise FileExistsError(f'{path} exists; pass --overwrite to replace it, or set '
                            '--config.sample.output=<another name>.npz')
  model, params, step, mesh = restore_for_inference(config, workdir, use_ema=config.sample.use_ema)
  if jax.process_index() == 0:  # before hours of sampling, not after
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
  generate_fn = make_generate_fn(config, model, mesh, load_classifier(config))
  logging.info('sampling %d images with %s, %d steps, guidance %.2f, from step %d',
               config.sample.num_samples, config.sample.sampler, config.sample.num_steps,
               config.sample.guidance_scale, step)
  images, cond = generate_samples(config, generate_fn, params, mesh, config.sample.num_samples,
                                  config.sample.seed, progress=True)
  if jax.process_index() == 0:
    write_npz(out_path, images, cond.get('y', np.zeros(len(images), np.int32)), cond.get('prompts'))
    write_png(grid_path, image_grid(images[:min(len(images), 100)]))
    logging.info('wrote %s (%s) and %s', out_path, images.shape, grid_path)
  return out_path

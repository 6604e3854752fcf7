"""--mode=sample, and generation wherever samples are drawn (grids, evaluators, sweeps): the jitted sampling
function and the batched, device-count-independent loop around it."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from diffusion.samplers import run_sampler
from diffusion.schedules import alphas_cumprod_for
from diffusion.transport import transport_from_config
from input_pipeline.files import refuse_existing, write_npz, write_png
from input_pipeline.images import image_grid, to_uint8
from jobs.conditions import default_conditions, model_condition
from jobs.guided import guided_model, load_classifier, load_guide
from jobs.restore import restore_for_inference
from jobs.vae import make_latent_decoder
from training import sharding as sharding_lib

# A sampler is one lax loop of model calls on a batch. From LONG_SAMPLING_LOOP sample-steps per call (steps x batch) on,
# its run time, not its compile time, dominates: it compiles at XLA's full backend optimisation (the default) even
# where XLA_FLAGS lower it for fast compiles of train steps, as the test suite does. Measured at level 0 on XLA:CPU: a
# 500-step loop ran ~10x slower; 4 steps of 8 tiny-U-Net samples compiled seconds faster than they ran slower, while
# 10 classifier-guided steps of 40 samples ran 18 s slower.
LONG_SAMPLING_LOOP = 64


def sampler_compiler_options(sample_config):
  """XLA compiler options for the sampling loop of `sample_config`: full optimisation for a long loop (an adaptive
  one counts its most steps), else none (the process's XLA_FLAGS)."""
  steps = sample_config.max_adaptive_steps if sample_config.sampler == 'ode_dopri5' else sample_config.num_steps
  long_loop = steps * sample_config.batch_size >= LONG_SAMPLING_LOOP
  return {'xla_backend_optimization_level': 3} if long_loop else None


def initial_noise(seed, start_index, count, shape):
  """Noise of sample i depends only on (seed, i): the same samples whatever the batch or device count."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(
      start_index, start_index + count))
  return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


def make_generate_fn(config, model, mesh, classifier=None, guide=None):
  """jitted generate(params, cond, noise, rng, guidance_scale, autoguidance_scale=None) -> samples in the data space.

  The model is guided as `jobs.guided.guided_model` builds it (CFG when the model is conditional, with the scale
  traced so sweeping it reuses one compilation; EDM preconditioning; learned variances). The noisy classifier of
  config.sample.classifier_workdir guides it towards cond['y'] at config.sample.classifier_scale, for unconditional
  models too: `classifier` is that classifier when the caller loaded it already (load_classifier), else it is
  loaded here; the returned function then has `classifier_classes`, for generate_samples. The weaker model of
  config.sample.guide_workdir autoguides it (`guide` when the caller loaded it already, else load_guide) at
  autoguidance_scale (None: config.sample.autoguidance_scale), traced as the guidance scale is.
  """
  classifier = load_classifier(config) if classifier is None else classifier
  guide = load_guide(config) if guide is None else guide
  alphas_cumprod = alphas_cumprod_for(config)
  batch_sharding = sharding_lib.batch_sharding(mesh)

  def generate(params, classifier_inputs, guide_inputs, cond, noise, rng, guidance_scale):
    guided = guided_model(config, model, params, cond, guidance_scale, classifier, classifier_inputs, guide,
                          guide_inputs)
    return run_sampler(config.sample, guided.objective, alphas_cumprod, guided.model_fn, noise, rng, guided.learn_sigma,
                       guided.classifier_gradient, transport_from_config(config.diffusion))

  replicated = NamedSharding(mesh, P())
  jitted = jax.jit(generate, in_shardings=(None, None, None, batch_sharding, batch_sharding, replicated, replicated),
                   out_shardings=batch_sharding, compiler_options=sampler_compiler_options(config.sample))
  classifier_inputs = None if classifier is None else (classifier.params, np.float32(config.sample.classifier_scale))

  def guide_inputs(autoguidance_scale=None):
    scale = config.sample.autoguidance_scale if autoguidance_scale is None else autoguidance_scale
    return None if guide is None else (guide.params, np.float32(scale))

  def generate_fn(params, cond, noise, rng, guidance_scale, autoguidance_scale=None):
    return jitted(params, classifier_inputs, guide_inputs(autoguidance_scale), cond, noise, rng, guidance_scale)

  def compile_for(params, cond, noise, rng, guidance_scale):
    """generate_fn compiled ahead of time for these shapes (to time compilation apart from sampling)."""
    compiled = jitted.lower(params, classifier_inputs, guide_inputs(), cond, noise, rng, guidance_scale).compile()
    return lambda params, cond, noise, rng, scale: compiled(params, classifier_inputs, guide_inputs(), cond, noise, rng,
                                                            scale)

  generate_fn.compile_for = compile_for
  generate_fn.classifier_classes = 0 if classifier is None else classifier.num_classes
  return generate_fn


def generate_samples(config, generate_fn, params, mesh, num_samples, seed, cond=None, batch_size=None,
                     guidance_scale=None, progress=False, autoguidance_scale=None):
  """num_samples images (uint8 NHWC) and their conditions (numpy dict), in batches of at most batch_size.

  cond defaults to every class equally often (jobs.conditions.default_conditions; with a guiding classifier,
  its classes for unconditional models). Only the model's inputs (jobs.conditions.model_condition) and a
  guiding classifier's labels go to generate_fn; the returned dict is the whole cond, prompt strings included.
  guidance_scale and autoguidance_scale default to config.sample's.
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
  autoguidance = {} if autoguidance_scale is None else {'autoguidance_scale': autoguidance_scale}
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  decode = latent_decoder(config)
  out = []
  starts = range(0, num_samples, batch_size)
  if progress:
    starts = tqdm(starts, desc='sampling', unit='batch')
  for start in starts:
    count = min(batch_size, num_samples - start)
    pad = batch_size - count
    batch_cond = {k: np.pad(v[start:start + count], [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in model_cond.items()}
    noise = np.asarray(initial_noise(seed, start, batch_size, shape))
    batch_cond, noise = sharding_lib.shared_batch_to_global((batch_cond, noise), mesh)  # same on every host
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1_000_000_007 + start)
    x = generate_fn(params, batch_cond, noise, rng, jnp.float32(scale), **autoguidance)
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
  decode = make_latent_decoder(config)
  return lambda z: to_uint8(decode(z))


def run_sample_job(config, workdir, overwrite=False):
  """--mode=sample: the latest checkpoint's (EMA) parameters -> npz of samples + PNG grid."""
  out_path = os.path.join(workdir, config.sample.output)
  grid_path = os.path.splitext(out_path)[0] + '_grid.png'
  for path in (out_path, grid_path):
    refuse_existing(path, overwrite, 'set --config.sample.output=<another name>.npz')
  model, params, step, mesh = restore_for_inference(config, workdir, use_ema=config.sample.use_ema)
  if jax.process_index() == 0:  # before hours of sampling, not after
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
  generate_fn = make_generate_fn(config, model, mesh)
  logging.info('sampling %d images with %s, %d steps, guidance %.2f, from step %d', config.sample.num_samples,
               config.sample.sampler, config.sample.num_steps, config.sample.guidance_scale, step)
  images, cond = generate_samples(config, generate_fn, params, mesh, config.sample.num_samples, config.sample.seed,
                                  progress=True)
  if jax.process_index() == 0:
    write_npz(out_path, images, cond.get('y', np.zeros(len(images), np.int32)), cond.get('prompts'))
    write_png(grid_path, image_grid(images[:min(len(images), 100)]))
    logging.info('wrote %s (%s) and %s', out_path, images.shape, grid_path)
  return out_path

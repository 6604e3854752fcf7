"""Held-out loss during training (config.val): the training loss of fixed, noised examples of a held-out set.

The examples, their timesteps and their noise are drawn from a fixed seed, the same at every evaluation and in every
run, so the curve moves with the parameters alone: the validation loss of scaling studies, and for a noisy classifier
the `val` loss and accuracy that guided-diffusion's classifier_train.py logs. No label dropout, no model dropout. It
is reported for the parameters and for the EMA parameters: `val/loss`, `val/ema_loss`, and likewise `val/accuracy`
(classifiers) and `val/vlb` (learned variances).
"""
import logging
import time

import jax
import jax.numpy as jnp

import sharding as sharding_lib
from diffusion.schedules import alphas_cumprod_for
from input_pipeline import StepBatcher, create_source
from models.conditioning import condition_from_batch

VAL_SEED = 20210511  # examples, timesteps and noise of every evaluation


def validation_data_config(config):
  """config.data with the held-out split (tfds) or directory (image_folder, latents) of config.val."""
  data = config.data.copy_and_resolve_references()
  if config.val.split:
    data.split = config.val.split
  if config.val.path:
    data.path = config.val.path
  return data


def held_out_source(config):
  """The held-out data source, checked to hold config.val.num_examples examples."""
  source = create_source(validation_data_config(config))
  if config.val.num_examples > len(source):
    raise ValueError(f'config.val.num_examples={config.val.num_examples} is more than the {len(source)} examples of '
                     f'the held-out data; lower it to at most {len(source)}')
  return source


class HeldOutLoss:
  """`__call__(state)` -> {'val/loss': ..., 'val/ema_loss': ..., ...} over config.val.num_examples examples."""

  def __init__(self, config, model, mesh, source=None):
    from train import batch_loss, loss_inputs  # pylint: disable=import-outside-toplevel (train imports this module)
    source = held_out_source(config) if source is None else source
    self.mesh, self.num_batches = mesh, config.val.num_examples // config.val.batch_size
    self.batcher = StepBatcher(source, config.val.batch_size, VAL_SEED, process_index=jax.process_index(),
                               process_count=jax.process_count())
    alphas_cumprod = jnp.asarray(alphas_cumprod_for(config))

    def metrics(params, batch, index):
      noise_rng = jax.random.fold_in(jax.random.PRNGKey(VAL_SEED), index)
      inputs = loss_inputs(batch, condition_from_batch(batch, config), noise_rng, alphas_cumprod, config)
      loss, extra = batch_loss(params, inputs, None, model=model, alphas_cumprod=alphas_cumprod, config=config,
                               train=False)
      return {'loss': loss, **extra}
    self.metrics = jax.jit(metrics)

  def __call__(self, state):
    start, totals = time.time(), {}
    for index in range(self.num_batches):
      batch = sharding_lib.host_batch_to_global(self.batcher.batch(index), self.mesh)
      for prefix, params in (('', state.params), ('ema_', state.ema_params)):
        for name, value in self.metrics(params, batch, jnp.asarray(index, jnp.int32)).items():
          totals[f'val/{prefix}{name}'] = totals.get(f'val/{prefix}{name}', 0.0) + value
    results = {name: float(value) / self.num_batches for name, value in jax.device_get(totals).items()}
    results['val/seconds'] = time.time() - start
    logging.info('held-out loss %.6g (EMA %.6g)', results['val/loss'], results['val/ema_loss'])
    return results


def check_val_config(config):
  """config.val: held-out data the training source can read, batches that divide the examples."""
  val = config.val  # (the sizes are checked positive with the other sizes, in configs.common.validate_config)
  if not val.every_steps:
    return
  source = config.data.source
  if source == 'tfds' and not val.split:
    raise ValueError("config.val.every_steps is set: name the held-out TFDS split, e.g. "
                     "--config.val.split=validation")
  if source in ('image_folder', 'latents') and not val.path:
    raise ValueError(f'config.val.every_steps is set: give the held-out {source} directory in config.val.path')
  if source == 'digits':
    raise ValueError("config.val.every_steps is set, but data.source='digits' has no held-out split; use an "
                     'image_folder, tfds or latents source with config.val.path or config.val.split')
  if val.num_examples % val.batch_size:
    raise ValueError(f'config.val.num_examples={val.num_examples} must be a multiple of '
                     f'config.val.batch_size={val.batch_size}')
  if (source in ('image_folder', 'latents') and val.path == config.data.path) or \
      (source == 'tfds' and val.split == config.data.split):
    logging.warning('config.val names the training data itself: the "held-out" loss is a training loss')

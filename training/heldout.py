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

from diffusion.schedules import alphas_cumprod_for
from models.conditioning import condition_from_batch
from training import sharding as sharding_lib
from training.step import batch_loss, loss_inputs

VAL_SEED = 20210511  # examples, timesteps and noise of every evaluation


class HeldOutLoss:
  """`__call__(state)` -> {'val/loss': ..., 'val/ema_loss': ..., ...} over config.val.num_examples examples."""
  def __init__(self, config, model, mesh, batcher):
    """batcher: `batch(index)` -> the host batch of the held-out examples (input_pipeline.StepBatcher of the
    held-out source with config.val.batch_size and VAL_SEED)."""
    self.mesh, self.num_batches = mesh, config.val.num_examples // config.val.batch_size
    self.batcher = batcher
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

"""REPA's frozen encoder for the train step (training/repa.py): the DINOv2 of a converted .msgpack, or the small
digits encoder trained in a workdir by configs/digits_encoder.py, with its params placed on the mesh, replicated."""
import logging
import os

import jax
import jax.numpy as jnp

from configs.validate import config_from_json
from jobs.restore import restore_for_inference
from models.dinov2 import DINOV2_VARIANTS, REPA_POSITIONS, load_dinov2, module_fields
from training.repa import RepaEncoder, classifier_tokens_fn, dinov2_tokens_fn
from training.sharding import replicated


def load_repa_encoder(config, mesh):
  """The RepaEncoder of config.repa, or None while config.repa.encoder is ''."""
  repa = config.repa
  if not repa.encoder:
    return None
  if repa.encoder == 'digits':
    encoder = digits_encoder(repa.encoder_weights)
  else:
    encoder = dinov2_encoder(repa, jnp.dtype(config.train.compute_dtype))
  return RepaEncoder(encoder.tokens, jax.device_put(encoder.params, replicated(mesh)))


def digits_encoder(workdir):
  """The noisy digits classifier of `workdir` (its EMA params), read at t = 0 through its spatial features."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.repa.encoder_weights={workdir}: no config.json there; train the digits encoder '
                            'first: python main.py --config=configs/digits_encoder.py --workdir=' + workdir)
  encoder_config = config_from_json(path)
  model, params, step, _ = restore_for_inference(encoder_config, workdir)
  logging.info('REPA encoder: the digits classifier of %s at step %d', workdir, step)
  return RepaEncoder(classifier_tokens_fn(model), params)


def dinov2_encoder(repa, dtype):
  """The DINOv2 of the converted file repa.encoder_weights, checked to be the variant repa.encoder, with REPA's
  resampling of its position table (models/dinov2.REPA_POSITIONS), computing in `dtype`."""
  path = repa.encoder_weights
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.repa.encoder_weights={path} is not a file; convert the {repa.encoder} '
                            'checkpoint first (python -m models.dinov2_convert, see models/dinov2.py)')
  module, params = load_dinov2(path, dtype=dtype, **REPA_POSITIONS)
  fields = module_fields(module)
  wanted = DINOV2_VARIANTS[repa.encoder]
  if any(fields[k] != v for k, v in wanted.items()):
    raise ValueError(f'config.repa.encoder_weights={path} holds a DINOv2 with {fields}, not {repa.encoder!r} '
                     f'({wanted}): name the variant the file holds in config.repa.encoder')
  logging.info('REPA encoder: %s from %s at %d px', repa.encoder, path, repa.encoder_resolution)
  return RepaEncoder(dinov2_tokens_fn(module, repa.encoder_resolution), params)

"""THE guided model_fn: what every sampler and editing loop sees of a trained model, built in one place.

Sampling (`--mode=sample`, grids, evaluators, sweeps) and editing (`--mode=edit`) call `guided_model`, which folds
into one `model_fn(x, t)`: classifier-free guidance (scale traced, interval, guided channels, learned-variance
channels kept conditional), EDM preconditioning (the network's F turned into the denoiser D, objective 'x0'),
and the gradient of a noisy classifier (config.sample.classifier_workdir, `load_classifier`) for classifier
guidance.
"""
import logging
import os
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from configs.validate import config_from_json
from diffusion.classifier_guidance import log_prob_gradient
from diffusion.guidance import classifier_free_guidance
from diffusion.objectives import edm_denoiser
from diffusion.schedules import alphas_cumprod_for
from jobs.conditions import null_condition_for
from jobs.restore import restore_for_inference
from models.conditioning import is_classifier, uses_labels


class GuidedModel(NamedTuple):
  """What a sampler or editing loop takes: model_fn(x, t) -> output read per `objective` (with learn_sigma, the
  prediction followed by Improved DDPM's variance values), and classifier_gradient(x_t, t) or None."""
  model_fn: Callable
  objective: str
  learn_sigma: bool
  classifier_gradient: Optional[Callable]


def guided_model(config, model, params, cond, guidance_scale, classifier=None, classifier_inputs=None):
  """The guided model of `model` with `params` for the batch conditions `cond` (the model's inputs; with a
  classifier, its labels in cond['y'] too). guidance_scale and classifier_inputs = (classifier params, scale)
  may be traced: sweeping them does not recompile."""
  def apply(x, t, c):
    return model.apply({'params': params}, x, t, **c)

  gradient = None
  if classifier is not None:
    classifier_params, classifier_scale = classifier_inputs
    classify = lambda x, t: classifier.model.apply({'params': classifier_params}, x, t)
    gradient = log_prob_gradient(classify, cond['y'], classifier_scale)
    if not uses_labels(config):  # the labels are the classifier's only
      cond = {k: v for k, v in cond.items() if k != 'y'}
  learn_sigma = config.diffusion.learn_sigma
  if cond:
    interval = tuple(config.sample.guidance_interval) or None
    model_fn = classifier_free_guidance(apply, cond, null_condition_for(cond, config), guidance_scale, interval,
                                        learned_variance=learn_sigma, channels=config.sample.guidance_channels or None)
  else:
    model_fn = lambda x, t: apply(x, t, cond)
  objective = config.diffusion.objective
  if config.diffusion.preconditioning == 'edm':
    model_fn, objective = edm_denoiser(model_fn, alphas_cumprod_for(config), config.diffusion.sigma_data), 'x0'
  return GuidedModel(model_fn, objective, learn_sigma, gradient)


class SamplingClassifier(NamedTuple):
  """A noisy classifier that guides sampling (load_classifier)."""
  model: Any
  params: Any
  num_classes: int


def load_classifier(config):
  """The classifier of config.sample.classifier_workdir (its config.json and newest checkpoint's EMA params), or
  None when that field is empty. Refuses one that does not read this model's images and timesteps."""
  workdir = config.sample.classifier_workdir
  if not workdir:
    return None
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

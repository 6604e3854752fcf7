"""THE guided model_fn: what every sampler and editing loop sees of a trained model, built in one place.

Sampling (`--mode=sample`, grids, evaluators, sweeps) and editing (`--mode=edit`) call `guided_model`, which folds
into one `model_fn(x, t)`: classifier-free guidance (scale traced, interval, guided channels, learned-variance
channels kept conditional), autoguidance by a weaker model of config.sample.guide_workdir (`load_guide`; scale
traced, the same interval), EDM preconditioning (the network's F turned into the denoiser D, objective 'x0'),
and the gradient of a noisy classifier (config.sample.classifier_workdir, `load_classifier`) for classifier
guidance.
"""
import logging
import os
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from configs.validate import config_from_json
from diffusion.classifier_guidance import log_prob_gradient
from diffusion.guidance import Autoguide, classifier_free_guidance
from diffusion.objectives import edm_denoiser
from diffusion.schedules import alphas_cumprod_for
from jobs.conditions import null_condition_for
from jobs.restore import restore_for_inference
from models.conditioning import is_classifier, low_res_size, uses_labels, uses_text


class GuidedModel(NamedTuple):
  """What a sampler or editing loop takes: model_fn(x, t) -> output read per `objective` (with learn_sigma, the
  prediction followed by Improved DDPM's variance values), and classifier_gradient(x_t, t) or None."""
  model_fn: Callable
  objective: str
  learn_sigma: bool
  classifier_gradient: Optional[Callable]


def guided_model(config, model, params, cond, guidance_scale, classifier=None, classifier_inputs=None, guide=None,
                 guide_inputs=None):
  """The guided model of `model` with `params` for the batch conditions `cond` (the model's inputs; with a
  classifier, its labels in cond['y'] too). guidance_scale, classifier_inputs = (classifier params, scale) and
  guide_inputs = (guide params, autoguidance scale w) may be traced: sweeping them does not recompile.

  With a guide (load_guide), the prediction is u + s (c - u) + (w - 1) (c - b) (diffusion/guidance.py): c, u
  this model's outputs for cond and the null condition, b the guide's for cond (or for none, if the guide is
  unconditional), s = guidance_scale; without classifier-free guidance (s = 1, or an unconditional model)
  b + w (c - b), EDM2's autoguidance. Learned variances stay this model's; with EDM preconditioning the
  combination of the networks' outputs is the same combination of the denoisers D (their weights sum to one).
  """
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
  null_cond = null_condition_for(cond, config) if cond else None  # None: no classifier-free guidance
  autoguide = None if guide is None else guide.autoguide(cond, *guide_inputs)
  model_fn = classifier_free_guidance(apply, cond, null_cond, guidance_scale,
                                      tuple(config.sample.guidance_interval) or None, learned_variance=learn_sigma,
                                      channels=config.sample.guidance_channels or None, autoguide=autoguide)
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
  cls_config.mesh = config.mesh  # placed on this run's mesh
  model, params, step, _ = restore_for_inference(cls_config, workdir, use_ema=cls_config.sample.use_ema)
  logging.info('classifier guidance: scale %g, %s of %d classes from step %d of %s', config.sample.classifier_scale,
               cls_config.model.name, classes, step, workdir)
  return SamplingClassifier(model, params, classes)


class GuidingModel(NamedTuple):
  """Autoguidance's weak model (load_guide): its module and params, the condition entries it takes
  (condition_inputs of its config), and whether its output ends in learned-variance channels."""
  model: Any
  params: Any
  inputs: tuple
  learn_sigma: bool

  def autoguide(self, cond, params, scale):
    """The Autoguide of diffusion/guidance.py: this model with `params` on the entries of `cond` it takes."""
    guide_cond = {k: v for k, v in cond.items() if k in self.inputs}
    return Autoguide(lambda x, t: self.model.apply({'params': params}, x, t, **guide_cond), scale, self.learn_sigma)


# diffusion.* fields of training, or of sampling where this model's settings apply: the guide may differ in them (with
# learn_sigma, only its prediction is read). Every other diffusion.* field must match.
GUIDE_MAY_DIFFER = ('label_dropout', 'loss_weighting', 'min_snr_gamma', 'flow_time_sampling', 'learn_sigma',
                    'transport_loss_weight', 'train_eps', 'cosine_loss_weight', 'sample_eps')
# what a condition entry means: a guide that takes it agrees on these fields
CONDITION_FIELDS = {
    'y': ('data.num_classes',), 'tokens': ('data.tokenizer', 'data.vocab_path', 'data.max_tokens'),
    'low_res': ('model.low_res_size',)
}


def condition_inputs(config):
  """The condition entries the model of `config` takes ('y', 'tokens', 'low_res'), in that order."""
  used = {'y': uses_labels(config), 'tokens': uses_text(config), 'low_res': low_res_size(config)}
  return tuple(k for k, v in used.items() if v)


def _value(config, field):
  section, name = field.split('.')
  return low_res_size(config) if field == 'model.low_res_size' else config[section][name]


def guide_mismatch(guide_config, config):
  """What keeps the guide of guide_config from guiding the model of config, naming the field, or None: they must
  share the data space, every diffusion.* field but GUIDE_MAY_DIFFER, and the conditions (or the guide
  takes none: an unconditional guide)."""
  latent = lambda c: c.data.source == 'latents'
  if latent(guide_config) != latent(config):
    return (f'data.source={guide_config.data.source!r}, this model has {config.data.source!r}: one denoises '
            'latents, the other pixels')
  inputs, guide_inputs = condition_inputs(config), condition_inputs(guide_config)
  if guide_inputs and guide_inputs != inputs:
    field = CONDITION_FIELDS[sorted(set(inputs) ^ set(guide_inputs))[0]][0]
    return (f'conditions {list(guide_inputs)} ({field}={_value(guide_config, field)!r}), this model takes '
            f'{list(inputs)} ({field}={_value(config, field)!r}): the guide takes the same conditions, or none')
  fields = ['data.image_size', 'data.channels'] + (['data.latent_scale', 'data.vae_config'] if latent(config) else [])
  fields += [f'diffusion.{k}' for k in config.diffusion if k not in GUIDE_MAY_DIFFER]
  fields += [field for k in guide_inputs for field in CONDITION_FIELDS[k]]
  for field in fields:
    if _value(guide_config, field) != _value(config, field):
      return f'{field}={_value(guide_config, field)!r}, this model has {_value(config, field)!r}'
  return None


def load_guide(config):
  """The guiding model of config.sample.guide_workdir (its config.json, its checkpoint of config.sample.guide_step
  or the newest, EMA or not as config.sample.guide_use_ema), or None when that field is empty. Its architecture
  (model.*) is its own; refuses one of other data, parameterisation, schedule or conditions."""
  workdir = config.sample.guide_workdir
  if not workdir:
    return None
  where = f'config.sample.guide_workdir={workdir}'
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{where}: no config.json there; train the guiding model in it (--mode=train '
                            f'--workdir={workdir}: this config with a smaller model.* or fewer train.num_steps)')
  guide_config = config_from_json(path)
  if is_classifier(guide_config):
    raise ValueError(f'{where} holds a classifier ({guide_config.model.name!r}); classifier guidance reads it from '
                     'config.sample.classifier_workdir')
  mismatch = guide_mismatch(guide_config, config)
  if mismatch:
    raise ValueError(f'{where} holds a model with {mismatch}. Autoguidance combines the outputs of two models of '
                     'the same data, parameterisation, schedule and conditions: guide with one trained so')
  guide_config.mesh = config.mesh  # placed on this run's mesh
  guide_config.sample.ema_sigma_rel = 0.0  # its stored EMA, not a post-hoc one its config.json may name
  try:
    model, params, step, _ = restore_for_inference(guide_config, workdir, use_ema=config.sample.guide_use_ema,
                                                   step=config.sample.guide_step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{where}, config.sample.guide_step={config.sample.guide_step}: {e}') from e
  logging.info('autoguidance: scale %g, %s from step %d of %s', config.sample.autoguidance_scale,
               guide_config.model.name, step, workdir)
  return GuidingModel(model, params, condition_inputs(guide_config), guide_config.diffusion.learn_sigma)

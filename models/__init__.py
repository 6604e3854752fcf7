"""Model registry: `config.model.name` picks the class, the other `config.model` fields are its arguments."""
import jax.numpy as jnp

from models.adm_classifier import ADMClassifier
from models.conditioning import model_num_classes
from models.dit import DiT
from models.text_encoder import text_encoder_spec
from models.unet import UNet

MODELS = {'dit': DiT, 'unet': UNet, 'adm_classifier': ADMClassifier}
# The constructor arguments build_model takes from other config sections, never from config.model.
SET_ELSEWHERE = {
    'image_size': 'config.data.image_size', 'channels': 'config.data.channels',
    'num_classes': 'config.data.num_classes', 'dtype': 'config.train.compute_dtype', 'remat': 'config.train.remat',
    'remat_policy': 'config.train.remat_policy', 'learn_sigma': 'config.diffusion.learn_sigma', 'text': 'config.text',
    'repa_depth': 'config.repa.depth', 'repa_projector_dim': 'config.repa.projector_dim',
    'repa_out_dim': 'config.repa.encoder_dim'
}


def build_model(config):
  """The Flax module for `config` (data shape and classes from config.data, the rest from config.model)."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f'config.model.name={name!r} is not a known model; choose one of {", ".join(MODELS)}')
  cls = MODELS[name]
  kwargs = {k: v for k, v in config.model.items() if k != 'name'}
  elsewhere = [key for key in SET_ELSEWHERE if key in kwargs]
  if elsewhere:
    raise ValueError('; '.join(f'config.model.{key} is set from {SET_ELSEWHERE[key]}' for key in elsewhere) +
                     f'; set {"that" if len(elsewhere) == 1 else "those"} instead')
  fields = set(cls.__dataclass_fields__) - {'parent', 'name'} - set(SET_ELSEWHERE)
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f'config.model has fields {sorted(unknown)} that model {name!r} does not take; '
                     f'it takes {sorted(fields)}')
  for key, value in kwargs.items():
    if isinstance(value, (list, tuple)):
      kwargs[key] = tuple(value)
  text = text_encoder_spec(config)  # None unless config.text.encoder (text-to-image)
  if text is not None:
    kwargs['text'] = text
  if 'repa_depth' in cls.__dataclass_fields__:
    kwargs.update(repa_fields(config))
  if 'learn_sigma' in cls.__dataclass_fields__:  # the denoisers, not the classifier
    kwargs['learn_sigma'] = config.diffusion.learn_sigma
  return cls(image_size=config.data.image_size, channels=config.data.channels, num_classes=model_num_classes(config),
             dtype=jnp.dtype(config.train.compute_dtype), remat=config.train.remat,
             remat_policy=config.train.remat_policy, **kwargs)


def repa_fields(config):
  """The DiT's REPA projector fields from config.repa; none while config.repa.encoder is ''."""
  repa = config.get('repa')
  if repa is None or not repa.encoder:
    return {}
  return dict(repa_depth=repa.depth, repa_projector_dim=repa.projector_dim, repa_out_dim=repa.encoder_dim)

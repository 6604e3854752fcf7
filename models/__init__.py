"""Model registry: `config.model.name` picks the class, the other `config.model` fields are its arguments."""
import jax.numpy as jnp

from models.adm_classifier import ADMClassifier
from models.conditioning import model_num_classes
from models.dit import DiT
from models.text_encoder import text_encoder_spec
from models.unet import UNet

MODELS = {'dit': DiT, 'unet': UNet, 'adm_classifier': ADMClassifier}


def build_model(config):
  """The Flax module for `config` (data shape and classes from config.data, the rest from config.model)."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f'config.model.name={name!r} is not a known model; choose one of {", ".join(MODELS)}')
  cls = MODELS[name]
  kwargs = {k: v for k, v in config.model.items() if k != 'name'}
  fields = set(cls.__dataclass_fields__) - {'parent', 'name', 'text', 'learn_sigma'}  # config.text, .diffusion
  unknown = set(kwargs) - fields
  if unknown:
    from_elsewhere = {'image_size', 'channels', 'num_classes', 'dtype', 'remat', 'remat_policy'}  # data, train
    raise ValueError(f'config.model has fields {sorted(unknown)} that model {name!r} does not take; '
                     f'it takes {sorted(fields - from_elsewhere)}')
  for key, value in kwargs.items():
    if isinstance(value, (list, tuple)):
      kwargs[key] = tuple(value)
  text = text_encoder_spec(config)  # None unless config.text.encoder (text-to-image)
  if text is not None:
    kwargs['text'] = text
  if 'learn_sigma' in cls.__dataclass_fields__:  # the denoisers, not the classifier
    kwargs['learn_sigma'] = config.diffusion.get('learn_sigma', False)
  return cls(image_size=config.data.image_size, channels=config.data.channels,
             num_classes=model_num_classes(config), dtype=jnp.dtype(config.train.compute_dtype),
             remat=config.train.remat, remat_policy=config.train.remat_policy, **kwargs)

"""The VAE of latent models, shared by --mode=encode, sampling and editing: its architecture, cached weights, and
the decoder from stored latents to pixels."""
import functools

import numpy as np

from models.vae import SD_VAE_CONFIG, TINY_VAE_CONFIG, decode_latents
from models.vae_convert import load_vae_params


def vae_config_for(name):
  """The models.vae architecture config.data.vae_config names."""
  configs = {'sd': SD_VAE_CONFIG, 'tiny': TINY_VAE_CONFIG}
  if name not in configs:
    raise ValueError(f'config.data.vae_config={name!r} is not one of {", ".join(configs)}')
  return configs[name]


@functools.lru_cache(maxsize=2)
def load_vae(weights, config_name):
  """VAE variables ({'params': ...}) from config.data.vae_weights, cached per process."""
  if not weights:
    raise ValueError('config.data.vae_weights is empty: latents are encoded and decoded with the SD VAE; '
                     'convert stabilityai/sd-vae-ft-mse with `python -m models.vae_convert '
                     '--weights=diffusion_pytorch_model.safetensors --out=data/sd_vae_ft_mse.msgpack` and pass '
                     '--config.data.vae_weights=data/sd_vae_ft_mse.msgpack (a .safetensors path works too)')
  try:
    return load_vae_params(weights, vae_config_for(config_name))
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.data.vae_weights={weights!r}: {e}') from e


def make_latent_decoder(config, batch_size=64):
  """numpy latents [N, h, w, c] (scaled as stored) -> numpy float32 pixels [N, H, W, 3] in [-1, 1]."""
  vae_config = vae_config_for(config.data.vae_config)
  if config.data.channels != vae_config['latent_channels']:
    raise ValueError(f'config.data.channels={config.data.channels} but the VAE has '
                     f'{vae_config["latent_channels"]} latent channels')
  params = load_vae(config.data.vae_weights, config.data.vae_config)
  scale = config.data.latent_scale

  def decode(latents):
    latents = np.asarray(latents, np.float32)
    return np.concatenate([
        np.asarray(decode_latents(params, latents[i:i + batch_size], scale, vae_config))
        for i in range(0, len(latents), batch_size)
    ])

  return decode

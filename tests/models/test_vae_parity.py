"""Parity of models/vae.py with diffusers' AutoencoderKL (PyTorch, CPU, random init).

Relative error here is max|flax - torch| / max|torch| over the whole tensor.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from models import vae  # noqa: E402
from models import vae_convert  # noqa: E402

TOLERANCE = 1e-4


def relative_error(actual, expected):
  """max|actual - expected| / max|expected|."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def build_torch_vae(config, seed=0):
  """A diffusers AutoencoderKL at random init, with GroupNorm affine params perturbed off (1, 0)."""
  torch.manual_seed(seed)
  levels = len(config["block_out_channels"])
  model = diffusers.AutoencoderKL(
      in_channels=config["in_channels"],
      out_channels=config["out_channels"],
      down_block_types=("DownEncoderBlock2D",) * levels,
      up_block_types=("UpDecoderBlock2D",) * levels,
      block_out_channels=tuple(config["block_out_channels"]),
      layers_per_block=config["layers_per_block"],
      latent_channels=config["latent_channels"],
      norm_num_groups=config["norm_num_groups"],
  ).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.add_(0.1 * torch.randn_like(param))
  return model


def torch_reference(model, images_nchw):
  """(posterior mean, logvar, decode(mean)) from diffusers, as NHWC numpy."""
  with torch.no_grad():
    posterior = model.encode(torch.from_numpy(images_nchw)).latent_dist
    recon = model.decode(posterior.mean).sample
  to_nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
  return to_nhwc(posterior.mean), to_nhwc(posterior.logvar), to_nhwc(recon)


def flax_outputs(config, variables, images_nhwc, means_nhwc):
  """(mean, logvar) of the images and decode(means) from the Flax VAE."""
  model = vae.build_vae(config)
  mean, logvar = jax.jit(lambda p, x: model.apply(p, x, method=model.encode))(variables, images_nhwc)
  recon = jax.jit(lambda p, z: model.apply(p, z, method=model.decode))(variables, means_nhwc)
  return np.asarray(mean), np.asarray(logvar), np.asarray(recon)


def random_images(batch, size, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)


def torch_state_dict_as_numpy(model):
  return {key: value.numpy() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("config, batch, size", [
    (vae.TINY_VAE_CONFIG, 2, 32),
    (vae.SD_VAE_CONFIG, 1, 32),
], ids=["tiny", "sd"])
def test_matches_diffusers(config, batch, size):
  torch_model = build_torch_vae(config)
  state_dict = torch_state_dict_as_numpy(torch_model)
  if config is vae.SD_VAE_CONFIG:
    assert sum(v.size for v in state_dict.values()) == vae.SD_VAE_NUM_PARAMS
  variables = vae_convert.convert_state_dict(state_dict, config)
  images = random_images(batch, size)
  mean_t, logvar_t, recon_t = torch_reference(torch_model, images)
  # Decode torch's own mean so the decoder check does not inherit encoder error.
  mean_f, logvar_f, recon_f = flax_outputs(config, variables, images.transpose(0, 2, 3, 1), mean_t)
  factor = vae.build_vae(config).downsample_factor
  assert mean_f.shape == (batch, size // factor, size // factor, 4)
  assert recon_f.shape == (batch, size, size, 3)
  assert np.abs(mean_t).max() > 1e-2 and np.abs(recon_t).max() > 1e-2  # not a degenerate comparison
  errors = {
      name: relative_error(a, b)
      for name, a, b in (("mean", mean_f, mean_t), ("logvar", logvar_f, logvar_t), ("recon", recon_f, recon_t))
  }
  print(f"relative errors ({'x'.join(map(str, config['block_out_channels']))}): {errors}")
  assert max(errors.values()) < TOLERANCE, errors


def test_functional_api_matches_diffusers_tiny():
  config = vae.TINY_VAE_CONFIG
  torch_model = build_torch_vae(config, seed=1)
  variables = vae_convert.convert_state_dict(torch_state_dict_as_numpy(torch_model), config)
  images_uint8 = np.random.RandomState(1).randint(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  images_nchw = (images_uint8.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
  mean_t, _, recon_t = torch_reference(torch_model, images_nchw)
  latents = vae.encode_to_latents(variables, images_uint8, config=config)
  assert relative_error(latents, 0.18215 * mean_t) < TOLERANCE
  decoded = vae.decode_latents(variables, latents, config=config)
  assert relative_error(decoded, np.clip(recon_t, -1, 1)) < TOLERANCE


def test_torch_bin_checkpoint_loads(tmp_path):
  config = vae.TINY_VAE_CONFIG
  torch_model = build_torch_vae(config, seed=2)
  path = tmp_path / vae_convert.WEIGHTS_FILENAME_BIN
  torch.save(torch_model.state_dict(), str(path))
  loaded = vae_convert.load_vae_params(str(path), config)
  expected = vae_convert.convert_state_dict(torch_state_dict_as_numpy(torch_model), config)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)

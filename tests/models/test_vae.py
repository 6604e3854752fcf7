"""Fast CPU tests for the Stable Diffusion VAE (models/vae.py) and its converter."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file

from models import vae
from models import vae_convert

TINY = vae.TINY_VAE_CONFIG
SD = vae.SD_VAE_CONFIG


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, params, images):
  """Compiled once per (model, shapes) for the whole module."""
  return model.apply(params, images, method=model.encode)


@functools.partial(jax.jit, static_argnums=0)
def _decode(model, params, latents):
  return model.apply(params, latents, method=model.decode)


def _random_images(seed):
  return np.random.RandomState(seed).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


def _random_state_dict(config, seed=0):
  """A random diffusers-named state dict for ``config``."""
  rng = np.random.RandomState(seed)
  return {
      key: rng.normal(size=shape).astype(np.float32) for key, shape in vae_convert.expected_torch_shapes(config).items()
  }


@pytest.fixture(scope="module")
def tiny_state_dict():
  return _random_state_dict(TINY)


@pytest.fixture(scope="module")
def tiny_params(tiny_state_dict):
  sd = dict(tiny_state_dict)
  for key in sd:  # keep activations O(1) through the random net
    if key.endswith("weight") and sd[key].ndim > 1:
      sd[key] = sd[key] / np.sqrt(np.prod(sd[key].shape[1:]))
  return vae_convert.convert_state_dict(sd, TINY)


def test_sd_vae_parameter_count_without_allocation():
  shapes = vae.vae_param_shapes(vae.build_vae(SD))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  # Sum over the 248 diffusers tensors of AutoencoderKL(128, 256, 512, 512).
  assert count == 83_653_863 == vae.SD_VAE_NUM_PARAMS
  assert abs(count - 83.65e6) / 83.65e6 < 1e-3
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))


def test_sd_vae_256_image_gives_32x32x4_latent():
  model = vae.build_vae(SD)
  shapes = vae.vae_param_shapes(model)
  image = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  mean, logvar = jax.eval_shape(lambda p, x: model.apply(p, x, method=model.encode), shapes, image)
  assert mean.shape == logvar.shape == (2, 32, 32, 4)
  latent = jax.ShapeDtypeStruct((2, 32, 32, 4), jnp.float32)
  recon = jax.eval_shape(lambda p, z: model.apply(p, z, method=model.decode), shapes, latent)
  assert recon.shape == (2, 256, 256, 3) and recon.dtype == jnp.float32
  assert model.downsample_factor == 8


def test_sd_checkpoint_key_layout():
  expected = vae_convert.expected_torch_shapes(SD)
  assert len(expected) == 248
  assert sum(int(np.prod(s)) for s in expected.values()) == 83_653_863
  assert expected["encoder.conv_in.weight"] == (128, 3, 3, 3)
  assert expected["encoder.down_blocks.0.resnets.0.norm1.weight"] == (128,)
  assert expected["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"] == (256, 128, 1, 1)
  assert expected["encoder.down_blocks.2.downsamplers.0.conv.weight"] == (512, 512, 3, 3)
  assert "encoder.down_blocks.3.downsamplers.0.conv.weight" not in expected
  assert expected["encoder.mid_block.attentions.0.to_q.weight"] == (512, 512)
  assert expected["encoder.mid_block.attentions.0.to_out.0.bias"] == (512,)
  assert expected["encoder.conv_out.weight"] == (8, 512, 3, 3)
  assert expected["quant_conv.weight"] == (8, 8, 1, 1)
  assert expected["post_quant_conv.weight"] == (4, 4, 1, 1)
  assert expected["decoder.conv_in.weight"] == (512, 4, 3, 3)
  assert expected["decoder.up_blocks.0.resnets.2.conv2.weight"] == (512, 512, 3, 3)
  assert expected["decoder.up_blocks.2.upsamplers.0.conv.weight"] == (256, 256, 3, 3)
  assert expected["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"] == (128, 256, 1, 1)
  assert "decoder.up_blocks.3.upsamplers.0.conv.weight" not in expected
  assert expected["decoder.conv_out.weight"] == (3, 128, 3, 3)


def test_convert_round_trip_tiny(tiny_state_dict):
  variables = vae_convert.convert_state_dict(tiny_state_dict, TINY)
  back = vae_convert.state_dict_from_params(variables)
  assert set(back) == set(tiny_state_dict)
  for key, value in tiny_state_dict.items():
    np.testing.assert_array_equal(back[key], value)
  p = variables["params"]
  conv = tiny_state_dict["encoder.down_blocks.0.resnets.1.conv2.weight"]  # (O, I, kH, kW)
  assert p["encoder"]["down_blocks_0"]["resnets_1"]["conv2"]["kernel"][2, 0, 5, 7] == conv[7, 5, 2, 0]
  dense = tiny_state_dict["decoder.mid_block.attentions.0.to_v.weight"]  # (O, I)
  assert p["decoder"]["mid_block"]["attentions_0"]["to_v"]["kernel"][3, 9] == dense[9, 3]
  np.testing.assert_array_equal(p["decoder"]["conv_norm_out"]["scale"], tiny_state_dict["decoder.conv_norm_out.weight"])
  init = jax.eval_shape(lambda: vae.init_vae_params(vae.build_vae(TINY), jax.random.key(0), image_size=8))
  assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, variables)


def test_convert_accepts_legacy_attention_names(tiny_state_dict):
  legacy = {}
  for key, value in tiny_state_dict.items():
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
      key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    legacy[key] = value
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
  assert "decoder.mid_block.attentions.0.query.bias" in legacy
  new = flatten_dict(vae_convert.convert_state_dict(tiny_state_dict, TINY))
  old = flatten_dict(vae_convert.convert_state_dict(legacy, TINY))
  assert new.keys() == old.keys()
  for path in new:
    np.testing.assert_array_equal(new[path], old[path])


def test_convert_accepts_1x1_conv_attention_weights(tiny_state_dict):
  sd = dict(tiny_state_dict)
  key = "encoder.mid_block.attentions.0.to_k.weight"
  sd[key] = sd[key][:, :, None, None]
  converted = vae_convert.convert_state_dict(sd, TINY)
  np.testing.assert_array_equal(converted["params"]["encoder"]["mid_block"]["attentions_0"]["to_k"]["kernel"],
                                tiny_state_dict[key].T)


def test_convert_fails_on_missing_key(tiny_state_dict):
  sd = dict(tiny_state_dict)
  del sd["decoder.up_blocks.1.resnets.2.norm2.bias"]
  with pytest.raises(vae_convert.CheckpointMismatchError,
                     match=r"missing keys: decoder\.up_blocks\.1\.resnets\.2\.norm2\.bias"):
    vae_convert.convert_state_dict(sd, TINY)


def test_convert_fails_on_misshaped_key(tiny_state_dict):
  sd = dict(tiny_state_dict)
  sd["encoder.conv_out.weight"] = np.zeros((8, 64, 1, 1), np.float32)
  message = "misshaped keys: encoder.conv_out.weight (8, 64, 1, 1) (expected (8, 64, 3, 3))"
  with pytest.raises(vae_convert.CheckpointMismatchError, match=re.escape(message)):
    vae_convert.convert_state_dict(sd, TINY)


def test_convert_fails_on_unexpected_key(tiny_state_dict):
  sd = dict(tiny_state_dict)
  sd["encoder.down_blocks.1.downsamplers.0.conv.weight"] = np.zeros((64, 64, 3, 3), np.float32)
  with pytest.raises(vae_convert.CheckpointMismatchError,
                     match=r"unexpected keys: encoder\.down_blocks\.1\.downsamplers\.0\.conv\.weight"):
    vae_convert.convert_state_dict(sd, TINY)


def test_convert_rejects_tiny_checkpoint_for_sd_config(tiny_state_dict):
  with pytest.raises(vae_convert.CheckpointMismatchError, match="missing keys: .*misshaped keys: "):
    vae_convert.convert_state_dict(tiny_state_dict, SD)


def test_safetensors_and_msgpack_files(tmp_path, tiny_state_dict):
  weights = tmp_path / vae_convert.WEIGHTS_FILENAME
  save_file(tiny_state_dict, str(weights))
  from_dir = vae_convert.load_vae_params(str(tmp_path), TINY)  # a directory holding the file
  out = tmp_path / "tiny.msgpack"
  vae_convert.save_params_msgpack(from_dir, str(out))
  restored = vae_convert.load_vae_params(str(out), TINY)
  flat_a, flat_b = flatten_dict(from_dir), flatten_dict(restored)
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path], flat_b[path])
  with pytest.raises(vae_convert.CheckpointMismatchError,
                     match=re.escape("misshaped keys: decoder/conv_in/bias (64,) (expected (512,))")):
    vae_convert.load_msgpack_params(str(out), SD)


def test_missing_weights_file_names_the_file_and_repo(tmp_path):
  with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors.*stabilityai/sd-vae-ft-mse"):
    vae_convert.main([f"--weights={tmp_path / 'nowhere.safetensors'}", f"--out={tmp_path / 'x.msgpack'}"])
  with pytest.raises(FileNotFoundError, match="stabilityai/sd-vae-ft-mse"):
    vae_convert.load_vae_params(str(tmp_path))  # a directory without the weights
  with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
    vae_convert.load_vae_params(str(tmp_path / "sd_vae_ft_mse.msgpack"))


def test_functional_api_tiny(tiny_params):
  rng = np.random.RandomState(1)
  images_uint8 = rng.randint(0, 256, size=(2, 16, 16, 3)).astype(np.uint8)
  images = images_uint8.astype(np.float32) / 127.5 - 1.0
  latents = vae.encode_to_latents(tiny_params, images_uint8, config=TINY)
  assert latents.shape == (2, 8, 8, 4) and latents.dtype == jnp.float32

  model = vae.build_vae(TINY)
  mean, logvar = _encode(model, tiny_params, images)
  np.testing.assert_allclose(latents, 0.18215 * mean, rtol=1e-5, atol=1e-6)
  assert -30.0 <= float(logvar.min()) and float(logvar.max()) <= 20.0

  sampled = vae.encode_to_latents(tiny_params, images, rng=jax.random.key(3), sample=True, config=TINY)
  noise = (sampled / 0.18215 - mean) / jnp.exp(0.5 * logvar)  # the N(0, 1) draw it must have used
  assert abs(float(noise.mean())) < 0.15 and abs(float(noise.std()) - 1.0) < 0.15
  with pytest.raises(ValueError, match="rng"):
    vae.encode_to_latents(tiny_params, images, sample=True, config=TINY)

  decoded = vae.decode_latents(tiny_params, latents, config=TINY)
  assert decoded.shape == (2, 16, 16, 3)
  raw = _decode(model, tiny_params, mean)
  np.testing.assert_allclose(decoded, jnp.clip(raw, -1, 1), rtol=1e-5, atol=1e-6)
  assert float(decoded.min()) >= -1.0 and float(decoded.max()) <= 1.0
  assert float(jnp.abs(raw).max()) > 1.0  # the random net overshoots, so the clip was exercised


def test_logvar_is_clipped(tiny_params):
  params = jax.tree.map(lambda x: x, tiny_params)
  bias = params["params"]["quant_conv"]["bias"]
  params["params"]["quant_conv"]["bias"] = np.concatenate([bias[:4], np.array([1e3, -1e3, 0, 0], np.float32)])
  model = vae.build_vae(TINY)
  _, logvar = _encode(model, params, _random_images(0))
  assert float(logvar[..., 0].min()) == 20.0 and float(logvar[..., 1].max()) == -30.0


def test_posterior_sample_statistics():
  mean = jnp.full((4, 32, 32, 4), 0.5)
  logvar = jnp.full_like(mean, np.log(4.0))
  model = vae.build_vae(TINY)
  z = model.apply({}, mean, logvar, jax.random.key(0), method=model.sample_latent)  # uses no params
  assert abs(float(z.mean()) - 0.5) < 0.05
  assert abs(float(z.std()) - 2.0) < 0.05


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny_params):
  images = _random_images(2)
  model32, model16 = vae.build_vae(TINY), vae.build_vae(TINY, dtype=jnp.bfloat16)
  init16 = jax.eval_shape(lambda: vae.init_vae_params(model16, jax.random.key(0), image_size=4))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init16))
  mean32, _ = _encode(model32, tiny_params, images)
  mean16, _ = _encode(model16, tiny_params, images)
  assert mean16.dtype == jnp.float32
  error = float(jnp.max(jnp.abs(mean16 - mean32)) / jnp.max(jnp.abs(mean32)))
  assert 1e-5 < error < 5e-2  # really computed in bfloat16, and still close
  recon16 = _decode(model16, tiny_params, mean32)
  recon32 = _decode(model32, tiny_params, mean32)
  assert recon16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(recon16 - recon32)) / jnp.max(jnp.abs(recon32))) < 5e-2


def test_build_vae_rejects_unknown_config_key():
  with pytest.raises(ValueError, match="block_channels"):
    vae.build_vae(dict(TINY, block_channels=(32, 64)))

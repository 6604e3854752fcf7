"""Parity with PyTorch references: random-weight transformers Dinov2Model / Dinov2WithRegistersModel written to
files in the Hugging Face and torch-hub key layouts, converted, must give the same normalised patch tokens and CLS
token; the position resampling and `dinov2_inputs` must equal torch's interpolate as the references call it."""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
safetensors_torch = pytest.importorskip('safetensors.torch')

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from models import dinov2_convert, weight_files  # pylint: disable=wrong-import-position
from models.dinov2 import dinov2_inputs, load_dinov2, position_embeddings  # pylint: disable=wrong-import-position
from models.torch_bicubic import resize_matrix  # pylint: disable=wrong-import-position

F = torch.nn.functional
TOLERANCE = 1e-5  # float32, relative to the largest output magnitude


def randomized(model, seed=0):
  """The model with every tensor random: Linear and conv weights with variance 1 / fan-in, other tensors
  0.1-scaled noise, around 1 for the norm and layer scales. Every tensor matters."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      around_one = name.endswith(('norm1.weight', 'norm2.weight', 'layernorm.weight', 'lambda1'))
      std = p[0].numel()**-0.5 if p.ndim in (2, 4) else 0.1
      p.copy_((1.0 if around_one else 0.0) + std * torch.randn(p.shape, generator=generator))
  return model.eval()


def uninitialised(model_class, config):
  """The transformers model without running its weight initialisation (randomized overwrites every tensor)."""
  with torch.device('meta'):
    model = model_class(config)
  return model.to_empty(device='cpu')


def hf_model(width, depth, heads, registers=0, image_size=518, swiglu=False):
  kwargs = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, image_size=image_size,
                patch_size=14, mlp_ratio=4, layer_norm_eps=1e-6, use_swiglu_ffn=swiglu)
  if registers:
    config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
    return randomized(uninitialised(transformers.Dinov2WithRegistersModel, config))
  return randomized(uninitialised(transformers.Dinov2Model, transformers.Dinov2Config(**kwargs)))


def images(height, width, count=2, seed=1):
  return np.random.default_rng(seed).normal(size=(count, height, width, 3)).astype(np.float32)


def reference_tokens(model, pixels_nhwc, registers=0):
  with torch.no_grad():
    hidden = model(pixel_values=torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  return hidden[:, 1 + registers:], hidden[:, 0]


def relative_error(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def assert_same_outputs(module, params, model, pixels, registers=0):
  outputs = module.apply({'params': params}, jnp.asarray(pixels))
  patch_tokens, cls = reference_tokens(model, pixels, registers)
  assert outputs['patch_tokens'].shape == patch_tokens.shape
  assert relative_error(outputs['patch_tokens'], patch_tokens) < TOLERANCE
  assert relative_error(outputs['cls'], cls) < TOLERANCE


def converted_from_folder(model, tmp_path):
  """save_pretrained (the key names of the published files) -> convert_file -> load_dinov2."""
  model.save_pretrained(tmp_path / 'hf')
  dinov2_convert.convert_file(str(tmp_path / 'hf'), str(tmp_path / 'dinov2.msgpack'))
  return load_dinov2(str(tmp_path / 'dinov2.msgpack'))


def test_vitb14_shapes_match_transformers_at_224(tmp_path):
  model = hf_model(768, 12, 12)
  model.save_pretrained(tmp_path)  # the msgpack round trip is left to the small models: it is slow at this size
  module, params = dinov2_convert.convert_state_dict(weight_files.read_state_dict(str(tmp_path / 'model.safetensors')))
  assert (module.width, module.depth, module.num_heads, module.mlp_dim, module.position_grid) == (768, 12, 12, 3072, 37)
  assert_same_outputs(module, params, model, images(224, 224))


def test_registers_and_antialiased_positions_match_transformers(tmp_path):
  model = hf_model(128, 2, 2, registers=4)
  module, params = converted_from_folder(model, tmp_path)
  assert module.num_register_tokens == 4 and module.interpolate_antialias
  assert_same_outputs(module, params, model, images(224, 224), registers=4)  # 37 -> 16: downsampled
  assert_same_outputs(module, params, model, images(182, 672, count=1), registers=4)  # 13 x 48: both ways


def test_position_interpolation_at_other_resolutions_matches_transformers(tmp_path):
  model = hf_model(128, 2, 2)
  module, params = converted_from_folder(model, tmp_path)
  assert not module.interpolate_antialias and module.interpolate_offset == 0
  assert_same_outputs(module, params, model, images(280, 196, count=1))  # 20 x 14 patches
  assert_same_outputs(module, params, model, images(532, 532, count=1))  # 38 x 38: upsampled


def test_swiglu_in_memory_layout_matches_transformers(tmp_path):
  model = hf_model(128, 2, 2, swiglu=True)  # state_dict() names: q_proj, gate_proj/up_proj/down_proj
  safetensors_torch.save_file(model.state_dict(), str(tmp_path / 'model.safetensors'))
  dinov2_convert.convert_file(str(tmp_path / 'model.safetensors'), str(tmp_path / 'g.msgpack'), num_heads=2)
  module, params = load_dinov2(str(tmp_path / 'g.msgpack'))
  assert module.swiglu and module.mlp_dim == 344  # dinov2's SwiGLUFFNFused: (int(512 * 2 / 3) + 7) // 8 * 8
  assert_same_outputs(module, params, model, images(224, 224, count=1))


def hub_layout(model):
  """The torch-hub (facebookresearch/dinov2) state dict of a transformers model, written from the hub's names."""
  hub = {}
  for key, value in model.state_dict().items():
    key = key.replace('embeddings.patch_embeddings.projection', 'patch_embed.proj').replace('encoder.layer.', 'blocks.')
    key = {
        'embeddings.cls_token': 'cls_token', 'embeddings.mask_token': 'mask_token',
        'embeddings.register_tokens': 'register_tokens', 'embeddings.position_embeddings': 'pos_embed'
    }.get(key, key)
    key = key.replace('layer_scale1.lambda1', 'ls1.gamma').replace('layer_scale2.lambda1', 'ls2.gamma')
    key = key.replace('attention.o_proj', 'attn.proj').replace('mlp.down_proj', 'mlp.w3')
    hub[key.replace('layernorm.', 'norm.')] = value
  for block in sorted({k.split('.')[1] for k in hub if k.startswith('blocks.')}):
    for kind in ('weight', 'bias'):
      parts = [hub.pop(f'blocks.{block}.attention.{p}_proj.{kind}') for p in 'qkv']
      hub[f'blocks.{block}.attn.qkv.{kind}'] = torch.cat(parts)
      if f'blocks.{block}.mlp.gate_proj.{kind}' in hub:
        gate_up = [hub.pop(f'blocks.{block}.mlp.{p}_proj.{kind}') for p in ('gate', 'up')]
        hub[f'blocks.{block}.mlp.w12.{kind}'] = torch.cat(gate_up)
  return hub


@pytest.mark.parametrize('registers, swiglu', [(0, True), (4, False)])
def test_torch_hub_layout_matches_transformers_at_the_table_grid(tmp_path, registers, swiglu):
  model = hf_model(128, 2, 2, registers=registers, image_size=56, swiglu=swiglu)  # a 4 x 4 position table
  torch.save(hub_layout(model), str(tmp_path / 'dinov2_pretrain.pth'))
  dinov2_convert.convert_file(str(tmp_path / 'dinov2_pretrain.pth'), str(tmp_path / 'hub.msgpack'), num_heads=2)
  module, params = load_dinov2(str(tmp_path / 'hub.msgpack'))
  assert module.interpolate_offset == (0.0 if registers else 0.1) and module.interpolate_antialias == bool(registers)
  assert_same_outputs(module, params, model, images(56, 56), registers=registers)


@pytest.mark.parametrize('grid_h, grid_w, offset, antialias', [(16, 16, 0.1, False), (16, 16, 0.0, True),
                                                               (20, 12, 0.1, False), (45, 45, 0.0, True)])
def test_positions_match_dinov2_interpolate(grid_h, grid_w, offset, antialias):
  """facebookresearch/dinov2 `interpolate_pos_encoding`: scale_factor (grid + offset) / M, or size when offset 0."""
  table = np.random.default_rng(2).normal(size=(1, 1 + 37 * 37, 8)).astype(np.float32)
  patches = torch.from_numpy(table[:, 1:]).reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
  size = {'scale_factor': ((grid_h + offset) / 37, (grid_w + offset) / 37)} if offset else {'size': (grid_h, grid_w)}
  expected = F.interpolate(patches, mode='bicubic', antialias=antialias, **size).permute(0, 2, 3, 1).reshape(1, -1, 8)
  ours = position_embeddings(jnp.asarray(table), grid_h, grid_w, offset, antialias)
  np.testing.assert_array_equal(ours[:, 0], table[:, 0])
  np.testing.assert_allclose(ours[:, 1:], expected.numpy(), atol=1e-5)  # float32 source coordinates


@pytest.mark.parametrize('in_size, out_size', [(37, 16), (16, 37), (256, 224), (7, 7)])
@pytest.mark.parametrize('antialias', [False, True])
def test_resize_matrix_is_torch_bicubic(in_size, out_size, antialias):
  basis = torch.eye(in_size).reshape(in_size, 1, 1, in_size)
  expected = F.interpolate(basis, size=(1, out_size), mode='bicubic', antialias=antialias).reshape(in_size, out_size)
  np.testing.assert_allclose(resize_matrix(in_size, out_size, antialias=antialias), expected.T.numpy(), atol=2e-6)


def repa_preprocess(uint8_nchw, resolution):
  """sihyun-yu/REPA train.py `preprocess_raw_image` for dinov2, written from its description."""
  x = uint8_nchw.float() / 255.
  mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
  x = (x - mean[:, None, None]) / std[:, None, None]
  return F.interpolate(x, resolution, mode='bicubic')


@pytest.mark.parametrize('size, resolution', [(256, 224), (64, 56)])
def test_dinov2_inputs_match_repa_preprocessing(size, resolution):
  pixels = np.random.default_rng(3).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
  expected = repa_preprocess(torch.from_numpy(pixels).permute(0, 3, 1, 2), resolution).permute(0, 2, 3, 1).numpy()
  ours = dinov2_inputs(pixels.astype(np.float32) / 127.5 - 1, resolution)
  assert ours.shape == (2, resolution, resolution, 3)
  np.testing.assert_allclose(ours, expected, atol=2e-5)

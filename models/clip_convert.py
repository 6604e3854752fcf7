"""Hugging Face CLIP checkpoints -> Flax parameters of `models.clip`, and the `.msgpack` they are saved in.

The public checkpoint (`openai/clip-vit-large-patch14` and friends) is `model.safetensors` or
`pytorch_model.bin` with keys such as `vision_model.embeddings.patch_embedding.weight`,
`text_model.encoder.layers.0.self_attn.q_proj.weight`, `visual_projection.weight`, `logit_scale`.
Every Flax parameter has exactly one Hugging Face name (`layers_0` <-> `layers.0`; `kernel`, `scale`,
`embedding` <-> `weight`); Linear weights are transposed, the patch conv goes OIHW -> HWIO. The buffers
`*.embeddings.position_ids` are ignored; any other missing, unexpected or misshaped key is an error naming it.

    python -m models.clip_convert --hf_weights=/path/clip-vit-large-patch14 --out=clip_l14.msgpack

`--hf_weights` is the checkpoint file or its folder; a `config.json` beside it is read for the head counts
and activation, otherwise the configuration is inferred from the tensor shapes (64-dimensional heads, as in
every OpenAI CLIP) or named with `--config=vit_l14`. `--text_only` converts a `CLIPTextModel` checkpoint
(e.g. Stable Diffusion's `text_encoder/model.safetensors`, keys `text_model.*`).
"""
import dataclasses
import os
import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from models import weight_files
from models.clip import (CLIP_CONFIGS, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextTransformer, CLIPVisionConfig)

IGNORED_KEYS = ('text_model.embeddings.position_ids', 'vision_model.embeddings.position_ids')
WHERE_TO_GET = ('the Hugging Face checkpoint, e.g. https://huggingface.co/openai/clip-vit-large-patch14 '
                '(files model.safetensors and config.json)')

# --- names and layouts -------------------------------------------------------------------------------------


def hf_name(flax_path):
  """('text_model', 'encoder', 'layers_0', 'mlp', 'fc1', 'kernel') -> 'text_model.encoder.layers.0.mlp.fc1.weight'."""
  parts = [re.sub(r'^layers_(\d+)$', r'layers.\1', p) for p in flax_path]
  if parts[-1] in ('kernel', 'scale', 'embedding'):
    parts[-1] = 'weight'
  return '.'.join(parts)


def to_hf_layout(flax_path, param):
  """Inverse of `weight_files.torch_to_flax` (for tests and export)."""
  if flax_path[-1] == 'kernel' and param.ndim == 2:
    return param.T
  if flax_path[-1] == 'kernel' and param.ndim == 4:
    return param.transpose(3, 2, 0, 1)
  return param


def _param_shapes(module, *example_inputs):
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example_inputs))['params']
  return {path: tuple(leaf.shape) for path, leaf in flatten_dict(shapes).items()}


def clip_param_shapes(config):
  """{flax path: shape} of a CLIPModel, without allocating it."""
  images = jnp.zeros((1, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
  ids = jnp.zeros((1, config.text.max_length), jnp.int32)
  return _param_shapes(CLIPModel(config), images, ids)


def text_param_shapes(text_config):
  """{flax path: shape} of a CLIPTextTransformer, without allocating it."""
  return _param_shapes(CLIPTextTransformer(text_config), jnp.zeros((1, text_config.max_length), jnp.int32))


def convert_with_shapes(state_dict, param_shapes, prefix=''):
  """Maps a Hugging Face state dict onto the Flax tree described by `param_shapes`; strict, float32."""
  expected = {prefix + hf_name(path): path for path in param_shapes}
  given = {k: v for k, v in state_dict.items() if k not in IGNORED_KEYS}
  problems = weight_files.key_and_shape_problems(
      weight_files.array_shapes(given),
      {name: weight_files.torch_shape(path, param_shapes[path]) for name, path in expected.items()})
  if problems:
    raise ValueError(f'the CLIP state dict does not fit the config (Hugging Face key layout, {len(expected)} '
                     'tensors): ' + '; '.join(problems))
  return unflatten_dict({
      path: np.array(weight_files.torch_to_flax(path, np.asarray(given[name])), dtype=np.float32, order='C')
      for name, path in expected.items()
  })


# --- configuration from shapes or config.json -------------------------------------------------------------


def _depth(state_dict, tower):
  layers = {int(m.group(1)) for k in state_dict if (m := re.match(rf'{tower}\.encoder\.layers\.(\d+)\.', k))}
  if not layers:
    raise KeyError(f'no {tower}.encoder.layers.* keys in the state dict')
  return max(layers) + 1


def _shape(state_dict, key):
  if key not in state_dict:
    raise KeyError(f'cannot infer the CLIP config: key {key} is missing')
  return tuple(np.shape(state_dict[key]))


def infer_text_config(state_dict, head_dim=64):
  """CLIPTextConfig from tensor shapes; head count assumes `head_dim`-dimensional heads."""
  vocab_size, width = _shape(state_dict, 'text_model.embeddings.token_embedding.weight')
  max_length, _ = _shape(state_dict, 'text_model.embeddings.position_embedding.weight')
  mlp_dim, _ = _shape(state_dict, 'text_model.encoder.layers.0.mlp.fc1.weight')
  return CLIPTextConfig(vocab_size=vocab_size, max_length=max_length, width=width,
                        depth=_depth(state_dict, 'text_model'), num_heads=max(width // head_dim, 1), mlp_dim=mlp_dim)


def infer_clip_config(state_dict, head_dim=64):
  """CLIPConfig from tensor shapes: a named config when the shapes match one, else 64-dim heads."""
  width, _, patch, _ = _shape(state_dict, 'vision_model.embeddings.patch_embedding.weight')
  positions, _ = _shape(state_dict, 'vision_model.embeddings.position_embedding.weight')
  grid = int(round((positions - 1)**0.5))
  if grid * grid != positions - 1:
    raise ValueError(f'vision position embedding has {positions} rows, not 1 + a square number of patches')
  mlp_dim, _ = _shape(state_dict, 'vision_model.encoder.layers.0.mlp.fc1.weight')
  vision = CLIPVisionConfig(image_size=grid * patch, patch_size=patch, width=width,
                            depth=_depth(state_dict, 'vision_model'), num_heads=max(width // head_dim,
                                                                                    1), mlp_dim=mlp_dim)
  projection_dim, _ = _shape(state_dict, 'visual_projection.weight')
  inferred = CLIPConfig(text=infer_text_config(state_dict, head_dim), vision=vision, projection_dim=projection_dim)
  for named in CLIP_CONFIGS.values():
    if _without_heads(named) == _without_heads(inferred):
      return named
  return inferred


def _without_heads(config):
  """The config with head counts blanked: what tensor shapes can tell."""
  return dataclasses.replace(config, text=dataclasses.replace(config.text, num_heads=0),
                             vision=dataclasses.replace(config.vision, num_heads=0))


def _text_config_from_hf(d):
  return CLIPTextConfig(vocab_size=d.get('vocab_size', 49408), max_length=d.get('max_position_embeddings', 77),
                        width=d.get('hidden_size', 512), depth=d.get('num_hidden_layers', 12),
                        num_heads=d.get('num_attention_heads', 8), mlp_dim=d.get('intermediate_size', 2048),
                        hidden_act=d.get('hidden_act', 'quick_gelu'), layer_norm_eps=d.get('layer_norm_eps', 1e-5))


def config_from_hf_json(d):
  """CLIPConfig (or CLIPTextConfig for a CLIPTextModel) from a Hugging Face config.json dict."""
  if 'text_config' not in d:
    return _text_config_from_hf(d)
  v = d.get('vision_config') or {}
  vision = CLIPVisionConfig(image_size=v.get('image_size', 224), patch_size=v.get('patch_size', 32),
                            width=v.get('hidden_size', 768), depth=v.get('num_hidden_layers', 12),
                            num_heads=v.get('num_attention_heads', 12), mlp_dim=v.get('intermediate_size', 3072),
                            hidden_act=v.get('hidden_act', 'quick_gelu'), layer_norm_eps=v.get('layer_norm_eps', 1e-5))
  return CLIPConfig(text=_text_config_from_hf(d['text_config'] or
                                              {}), vision=vision, projection_dim=d.get('projection_dim', 512),
                    logit_scale_init=d.get('logit_scale_init_value', 2.6592))


# --- the pure converters ----------------------------------------------------------------------------------


def convert_state_dict(state_dict, config=None):
  """Flax params of `models.clip.CLIPModel` from a `transformers.CLIPModel` state dict of numpy arrays."""
  config = infer_clip_config(state_dict) if config is None else config
  return convert_with_shapes(state_dict, clip_param_shapes(config))


def convert_text_state_dict(state_dict, text_config=None):
  """Flax params of `CLIPTextTransformer` from the `text_model.*` keys of a `transformers.CLIPTextModel` (or
  CLIPModel) state dict; other keys (the vision tower, a `text_projection`) are left out. The in-memory state
  dict of a transformers >= 5 CLIPTextModel has no `text_model.` prefix (files still do); it is accepted too."""
  if not any(k.startswith('text_model.') for k in state_dict):
    state_dict = {'text_model.' + k: v for k, v in state_dict.items()}
  state_dict = {k: v for k, v in state_dict.items() if k.startswith('text_model.')}
  text_config = infer_text_config(state_dict) if text_config is None else text_config
  return convert_with_shapes(state_dict, text_param_shapes(text_config), prefix='text_model.')


# --- files ------------------------------------------------------------------------------------------------


def find_hf_weights(path):
  """The weights file at `path` (a file, or a folder holding model.safetensors or pytorch_model.bin)."""
  if os.path.isfile(path):
    return path
  found = weight_files.hf_weights_in(path) if os.path.isdir(path) else None
  if found:
    return found
  raise FileNotFoundError(f'CLIP weights not found at {path!r}: expected a file named '
                          f'{" or ".join(weight_files.HF_WEIGHT_FILES)}'
                          f' (or a folder holding one) from {WHERE_TO_GET}')


def load_hf_state_dict(path):
  """Numpy state dict from a Hugging Face `.safetensors` (no torch needed) or `.bin` file or its folder."""
  return weight_files.read_state_dict(find_hf_weights(path))


def read_hf_config(weights_path):
  """The config.json beside the weights as a config object, or None when there is none."""
  config = weight_files.hf_config_beside(weights_path)
  return None if config is None else config_from_hf_json(config)


def _config_to_dict(config):
  return {'kind': 'clip_text' if isinstance(config, CLIPTextConfig) else 'clip', **dataclasses.asdict(config)}


def _config_from_dict(d):
  d = dict(d)
  kind = d.pop('kind')
  if kind == 'clip_text':
    return CLIPTextConfig(**d)
  return CLIPConfig(text=CLIPTextConfig(**d['text']), vision=CLIPVisionConfig(**d['vision']),
                    projection_dim=d['projection_dim'], logit_scale_init=d['logit_scale_init'])


def save_converted(path, config, params):
  """Writes {'config', 'params'} to `path` as msgpack (flax.serialization)."""
  payload = {'config': _config_to_dict(config), 'params': jax.tree.map(np.asarray, params)}
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(payload))


def load_converted(path):
  """(config, params) from a `.msgpack` written by this module; shapes are checked against the config."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'converted CLIP weights {path!r} not found; make them with `python -m '
                            f'models.clip_convert --hf_weights=PATH --out={path}` from {WHERE_TO_GET}')
  with open(path, 'rb') as f:
    payload = flax.serialization.msgpack_restore(f.read())
  config = _config_from_dict(payload['config'])
  params = payload['params']
  expected = text_param_shapes(config) if isinstance(config, CLIPTextConfig) else clip_param_shapes(config)
  problems = weight_files.key_and_shape_problems({'/'.join(p): np.shape(v) for p, v in flatten_dict(params).items()},
                                                 {'/'.join(p): shape for p, shape in expected.items()})
  if problems:
    raise ValueError(f'{path}: parameters do not match the stored config: ' + '; '.join(problems))
  return config, params


def convert_file(hf_weights, out, config_name=None, text_only=False):
  """Reads a Hugging Face checkpoint, converts it and writes `out`; returns the config used."""
  state_dict = load_hf_state_dict(hf_weights)
  config = read_hf_config(hf_weights)
  if config_name is not None:
    config = get_named_config(config_name, text_only)
  if text_only:
    config = config.text if isinstance(config, CLIPConfig) else config
    params = convert_text_state_dict(state_dict, config)
    config = config or infer_text_config(state_dict)
  else:
    if isinstance(config, CLIPTextConfig):
      raise ValueError(f'{hf_weights} holds a CLIPTextModel config; pass --text_only')
    config = config or infer_clip_config(state_dict)
    params = convert_state_dict(state_dict, config)
  save_converted(out, config, params)
  return config


def get_named_config(name, text_only=False):
  config = CLIP_CONFIGS.get(name)
  if config is None:
    raise KeyError(f'unknown CLIP config {name!r}; known: {sorted(CLIP_CONFIGS)}')
  return config.text if text_only else config


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = convert_file(f.hf_weights, f.out, f.config, f.text_only)
  n = sum(np.size(v) for v in jax.tree.leaves(load_converted(f.out)[1]))
  print(f'wrote {f.out}: {n:,} parameters, {config}')


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('hf_weights', None, 'model.safetensors / pytorch_model.bin or their folder', required=True)
  flags.DEFINE_string('out', None, 'output .msgpack path', required=True)
  flags.DEFINE_string('config', None, f'named config instead of config.json / inference: {sorted(CLIP_CONFIGS)}')
  flags.DEFINE_bool('text_only', False, 'convert a CLIPTextModel (keys text_model.*) to a CLIPTextTransformer')
  app.run(main)

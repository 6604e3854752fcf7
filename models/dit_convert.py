"""facebookresearch/DiT checkpoints (PyTorch) -> the params of this codebase's DiT (models/dit.py).

    python main.py --mode=import --config=configs/dit_xl.py --workdir=runs/dit_xl_2_256 --weights=DiT-XL-2-256x256.pt

The released files hold the EMA weights as a flat state dict; the checkpoints of DiT's train.py hold them
under 'ema' (models/weight_files.py reads both). The layout (DiT's models.py with timm's PatchEmbed,
Attention and Mlp; D hidden size, p patch, C channels, T tokens) and where each tensor goes:

  x_embedder.proj.weight             [D, C, p, p]  Conv2d, stride p   -> x_embedder/kernel [p, p, C, D]
  t_embedder.mlp.{0,2}.weight        [D, 256], [D, D]                 -> t_embedder/mlp_{0,2}/kernel
  y_embedder.embedding_table.weight  [classes + 1, D], null label last -> y_embedder/embedding_table/embedding
  blocks.N.adaLN_modulation.1.weight [6D, D] shift, scale, gate (attention), then the MLP's -> blocks_N/adaLN_modulation
  blocks.N.attn.qkv.weight           [3D, D] rows q | k | v, each ordered by head -> blocks_N/attn/qkv (the same split)
  blocks.N.attn.proj, .mlp.fc1 [4D, D], .mlp.fc2 -> blocks_N/attn/proj, blocks_N/mlp_fc1, blocks_N/mlp_fc2
  final_layer.adaLN_modulation.1     [2D, D] shift, scale
  final_layer.linear.weight          [p*p*C_out, D], features ordered (row in patch, column in patch, channel)
  pos_embed                          [1, T, D] fixed sin-cos buffer: compared with models.dit.sincos_pos_embed_2d,
                                     not stored (the model computes it)

Every Linear weight [out, in] becomes a Dense kernel [in, out] and each bias stays as it is; the LayerNorms
have no parameters. Every key and shape is checked against the model the config builds first.
"""
import math
import re

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from models import build_model
from models.dit import DIT_VARIANTS, sincos_pos_embed_2d
from models.shapes import abstract_params
from models.weight_files import array_shapes, key_and_shape_problems

WHERE_TO_GET = ('the DiT repository, github.com/facebookresearch/DiT: '
                'https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt (configs/dit_xl.py) and '
                'https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt (configs/dit_xl.py with '
                '--config.data.image_size=64); a checkpoint written by its train.py works too (its EMA weights)')

POS_EMBED_KEY = 'pos_embed'
POS_EMBED_TOLERANCE = 1e-3  # float16 storage rounds by < 5e-4; another grid order or frequency differs by ~1

# Flax module names that differ from DiT's (the rest are the same: t_embedder, attn, qkv, proj, final_layer, ...).
_TORCH_MODULE_NAMES = {
    'x_embedder': 'x_embedder.proj', 'mlp_0': 'mlp.0', 'mlp_2': 'mlp.2', 'adaLN_modulation': 'adaLN_modulation.1',
    'mlp_fc1': 'mlp.fc1', 'mlp_fc2': 'mlp.fc2'
}
_TORCH_LEAF_NAMES = {'kernel': 'weight', 'embedding': 'weight', 'bias': 'bias'}
_FLAX_BLOCK = re.compile(r'^blocks_(\d+)$')
_TORCH_BLOCK = re.compile(r'^blocks\.(\d+)\.')
# DiT hyperparameters a state dict's shapes reveal, and the config field that sets each.
_CONFIG_FIELDS = {
    'depth': 'model.depth', 'hidden_size': 'model.hidden_size', 'patch_size': 'model.patch_size',
    'mlp_ratio': 'model.mlp_ratio', 'channels': 'data.channels', 'image_size': 'data.image_size',
    'num_classes': 'data.num_classes', 'learn_sigma': 'diffusion.learn_sigma'
}


def torch_key(path):
  """('blocks_3', 'attn', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight'."""
  *modules, leaf = path
  parts = []
  for name in modules:
    block = _FLAX_BLOCK.match(name)
    parts.append(f'blocks.{block.group(1)}' if block else _TORCH_MODULE_NAMES.get(name, name))
  return '.'.join(parts + [_TORCH_LEAF_NAMES[leaf]])


def _torch_shape(path, shape):
  """The torch shape of a Flax param: conv kernels HWIO -> OIHW, Dense kernels transposed, the rest as is."""
  if path[-1] != 'kernel':
    return tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape[::-1])


def _to_flax(array, path):
  """One torch tensor (numpy) in the Flax layout, float32; a view where no cast is needed."""
  array = np.asarray(array, np.float32)
  if path[-1] != 'kernel':
    return array
  return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def _model_and_abstract_params(config):
  """The config's DiT and its params as shapes (nothing allocated); text-conditional configs are refused."""
  model = build_model(config)
  if model.text is not None:
    raise ValueError('the DiT checkpoints are class-conditional; this config is text-conditional '
                     f'(config.text.encoder={config.text.encoder!r}); import into a config without text')
  return model, abstract_params(config, model)


def _expected_shapes(model, abstract):
  """{DiT key: torch shape} that a checkpoint of `model` (params `abstract`) holds, pos_embed included."""
  shapes = {torch_key(path): _torch_shape(path, leaf.shape) for path, leaf in flatten_dict(abstract).items()}
  grid = model.image_size // model.patch_size
  shapes[POS_EMBED_KEY] = (1, grid * grid, model.hidden_size)
  return shapes


def _file_architecture(state_dict):
  """The DiT hyperparameters (names of _CONFIG_FIELDS) that a state dict's shapes imply, where it has the keys."""
  shape = lambda key: tuple(np.shape(state_dict[key])) if key in state_dict else ()
  found = {}
  conv = shape('x_embedder.proj.weight')
  if len(conv) == 4:
    found.update(hidden_size=conv[0], channels=conv[1], patch_size=conv[2])
  blocks = [int(m.group(1)) for m in map(_TORCH_BLOCK.match, state_dict) if m]
  if blocks:
    found['depth'] = max(blocks) + 1
  fc1 = shape('blocks.0.mlp.fc1.weight')
  if len(fc1) == 2 and fc1[1]:
    found['mlp_ratio'] = fc1[0] / fc1[1]
  table = shape('y_embedder.embedding_table.weight')
  if len(table) == 2:
    found['num_classes'] = table[0] - 1
  pos, linear = shape(POS_EMBED_KEY), shape('final_layer.linear.weight')
  if len(pos) == 3 and 'patch_size' in found and math.isqrt(pos[1])**2 == pos[1]:
    found['image_size'] = math.isqrt(pos[1]) * found['patch_size']
  if len(linear) == 2 and 'channels' in found:
    found['learn_sigma'] = linear[0] == 2 * found['patch_size']**2 * found['channels']
  return found


def _variant(depth, hidden_size):
  return next((name for name, v in DIT_VARIANTS.items() if (v['depth'], v['hidden_size']) == (depth, hidden_size)),
              None)


def _likely_cause(state_dict, model):
  """Which config fields disagree with the file, and what to use instead ('' if nothing stands out)."""
  if any(k.startswith('transformer_blocks.') for k in state_dict):
    return ('this is a diffusers DiTTransformer2DModel state dict (transformer_blocks.*); import the original '
            f'file from {WHERE_TO_GET}')
  found = _file_architecture(state_dict)
  differ = []
  for name, value in found.items():
    field, ours = _CONFIG_FIELDS[name], getattr(model, name)
    if ours != value:  # model fields come with the variant's config file below; the rest can be set directly
      differ.append(f'config.{field}={ours!r} but the file has {value!r}' +
                    ('' if field.startswith('model.') else f' (--config.{field}={value})'))
  variant, patch = _variant(found.get('depth'), found.get('hidden_size')), found.get('patch_size')
  if variant and patch and (variant, patch) != (_variant(model.depth, model.hidden_size), model.patch_size):
    differ.append(f'the file is a DiT-{variant}/{patch}: --config=configs/dit_{variant.lower()}.py:{patch}')
  if found.get('image_size', model.image_size) != model.image_size:
    differ.append('the latent side is the image side / 8: 64 for the 512x512 model')
  return '; '.join(differ)


def _check(state_dict, model, abstract):
  """Raises ValueError naming every missing, unexpected or misshaped key, a pos_embed that is not DiT's, and
  a head count other than the DiT variant's (heads leave no trace in the shapes)."""
  expected = _expected_shapes(model, abstract)
  problems = key_and_shape_problems(array_shapes(state_dict), expected)
  if problems:
    cause = _likely_cause(state_dict, model)
    raise ValueError(f'the weights do not fit the DiT of this config (depth {model.depth}, hidden {model.hidden_size}, '
                     f'patch {model.patch_size}, {model.image_size}x{model.image_size}x{model.channels} input, '
                     f'{model.num_classes} classes, learn_sigma={model.learn_sigma}; facebookresearch/DiT key '
                     f'layout, {len(expected)} tensors): ' + '; '.join(problems) +
                     (f'. Likely cause: {cause}' if cause else ''))
  grid = model.image_size // model.patch_size
  ours = sincos_pos_embed_2d(model.hidden_size, grid)
  error = float(np.max(np.abs(np.asarray(state_dict[POS_EMBED_KEY], np.float32)[0] - ours)))
  if not error <= POS_EMBED_TOLERANCE:
    raise ValueError(f'{POS_EMBED_KEY} of the file differs from models.dit.sincos_pos_embed_2d({model.hidden_size}, '
                     f'{grid}) by up to {error:.3g}: it is not DiT\'s fixed sin-cos embedding of a {grid}x{grid} '
                     'grid (row-major tokens, column half first), so the weights would not work with this model')
  variant = _variant(model.depth, model.hidden_size)
  if variant and DIT_VARIANTS[variant]['num_heads'] != model.num_heads:
    heads = DIT_VARIANTS[variant]['num_heads']
    raise ValueError(f'DiT-{variant} has {heads} attention heads (DiT\'s models.py) but config.model.num_heads='
                     f'{model.num_heads}: the weights would load, but attention would split them into the wrong '
                     f'heads; set --config.model.num_heads={heads}')


def params_from_state_dict(state_dict, config):
  """A facebookresearch/DiT state dict ({key: numpy array}) -> the params tree of build_model(config), float32
  numpy arrays (views of the input where no cast is needed). Raises ValueError if the file does not fit."""
  model, abstract = _model_and_abstract_params(config)
  _check(state_dict, model, abstract)
  return unflatten_dict({path: _to_flax(state_dict[torch_key(path)], path) for path in flatten_dict(abstract)})

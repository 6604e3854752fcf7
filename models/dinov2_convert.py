"""DINOv2 checkpoints -> Flax parameters of `models.dinov2.DINOv2`, saved as `.msgpack` for `load_dinov2`.

Two public layouts are read:
- torch hub (facebookresearch/dinov2 `dinov2_vitb14_pretrain.pth`, `dinov2_vitb14_reg4_pretrain.pth`, ...):
  `cls_token`, `pos_embed`, `register_tokens`, `mask_token`, `patch_embed.proj.*`, `blocks.0.norm1.*`,
  `blocks.0.attn.qkv.*` (fused), `blocks.0.attn.proj.*`, `blocks.0.ls1.gamma`, `blocks.0.mlp.fc1.*` or, for
  ViT-g, `blocks.0.mlp.w12.*` / `w3.*`, `norm.*`. This is the Flax layout, renamed.
- Hugging Face (`facebook/dinov2-*`, `facebook/dinov2-with-registers-*`, model.safetensors or pytorch_model.bin):
  `embeddings.*`, `encoder.layer.0.attention.attention.{query,key,value}` (or, as transformers >= 5 names them
  in memory, `attention.{q,k,v}_proj`), `attention.output.dense` (`attention.o_proj`), `layer_scale1.lambda1`,
  `mlp.fc1` or `mlp.weights_in`/`weights_out` (`mlp.gate_proj`/`up_proj`/`down_proj`), `layernorm.*`; these are
  first renamed to the torch-hub names, q/k/v (and gate/up) concatenated.

The architecture is read from the shapes (width, depth, FFN kind and width, registers, position grid) with
64-dimensional heads as in every DINOv2, unless a Hugging Face `config.json` beside the file names the heads.
The mask token is unused at inference and dropped; any other missing, unexpected or misshaped key is an error
naming it. Position resampling follows the source: transformers' for Hugging Face files, torch hub's for `.pth`
files (see `models/dinov2.py`).

    python -m models.dinov2_convert --weights=dinov2_vitb14_pretrain.pth --out=dinov2_vitb14.msgpack
"""
import os
import re

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from models import weight_files
from models.dinov2 import DINOv2, abstract_params, load_dinov2, save_dinov2

HEAD_DIM = 64
HUB_INTERPOLATE_OFFSET = 0.1  # facebookresearch/dinov2 hub models without registers
IGNORED_KEYS = ('mask_token',)
WHERE_TO_GET = ('https://huggingface.co/facebook/dinov2-base (model.safetensors) or the torch-hub file '
                'https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth')

# Hugging Face name -> torch-hub name (regular expressions over whole keys).
HF_RENAMES = (
    (r'embeddings\.cls_token', 'cls_token'),
    (r'embeddings\.mask_token', 'mask_token'),
    (r'embeddings\.register_tokens', 'register_tokens'),
    (r'embeddings\.position_embeddings', 'pos_embed'),
    (r'embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
    (r'encoder\.layer\.(\d+)\.', r'blocks.\1.'),
    (r'\.attention\.(attention\.query|q_proj)\.', '.attn.q.'),
    (r'\.attention\.(attention\.key|k_proj)\.', '.attn.k.'),
    (r'\.attention\.(attention\.value|v_proj)\.', '.attn.v.'),
    (r'\.attention\.(output\.dense|o_proj)\.', '.attn.proj.'),
    (r'\.layer_scale(\d)\.lambda1', r'.ls\1.gamma'),
    (r'\.mlp\.(weights_in)\.', '.mlp.w12.'),
    (r'\.mlp\.(weights_out|down_proj)\.', '.mlp.w3.'),
    (r'\.mlp\.gate_proj\.', '.mlp.gate.'),
    (r'\.mlp\.up_proj\.', '.mlp.up.'),
    (r'^layernorm\.', 'norm.'),
)
# Tensors concatenated along the output axis into one torch-hub tensor: (parts, fused).
HF_FUSED = ((('attn.q', 'attn.k', 'attn.v'), 'attn.qkv'), (('mlp.gate', 'mlp.up'), 'mlp.w12'))

# --- names and layouts -------------------------------------------------------------------------------------


def hub_name(flax_path):
  """('blocks_0', 'attn', 'qkv', 'kernel') -> 'blocks.0.attn.qkv.weight'; ls1 -> ls1.gamma."""
  parts = [re.sub(r'^blocks_(\d+)$', r'blocks.\1', p) for p in flax_path]
  if parts[-1] in ('kernel', 'scale'):
    parts[-1] = 'weight'
  if parts[0] == 'patch_embed':
    parts.insert(1, 'proj')
  if parts[-1] in ('ls1', 'ls2'):
    parts.append('gamma')
  return '.'.join(parts)


def _rename_hf(key):
  for pattern, replacement in HF_RENAMES:
    key = re.sub(pattern, replacement, key)
  return key


def _fuse(state_dict):
  """Concatenates each complete set of HF_FUSED parts; an incomplete set stays as it is (reported later)."""
  fused = dict(state_dict)
  for key in state_dict:
    for parts, target in HF_FUSED:
      match = re.fullmatch(rf'(blocks\.\d+)\.{re.escape(parts[0])}\.(weight|bias)', key)
      if not match:
        continue
      names = [f'{match.group(1)}.{part}.{match.group(2)}' for part in parts]
      if all(name in state_dict for name in names):
        fused[f'{match.group(1)}.{target}.{match.group(2)}'] = np.concatenate([state_dict[n] for n in names], 0)
        for name in names:
          del fused[name]
  return fused


def is_hf_layout(state_dict):
  return any(k.startswith(('embeddings.', 'encoder.layer.')) for k in state_dict)


def hub_state_dict(state_dict):
  """The torch-hub layout of a state dict in either layout."""
  if not is_hf_layout(state_dict):
    return dict(state_dict)
  return _fuse({_rename_hf(k): v for k, v in state_dict.items()})


# --- architecture from shapes -----------------------------------------------------------------------------


def _shape(state_dict, key):
  if key not in state_dict:
    raise KeyError(f'cannot infer the DINOv2 architecture: key {key} is missing (have {sorted(state_dict)[:8]}...)')
  return tuple(np.shape(state_dict[key]))


def infer_module(hub_weights, num_heads=None, **fields):
  """The DINOv2 module whose parameters have the shapes of a torch-hub-layout state dict."""
  width = _shape(hub_weights, 'cls_token')[-1]
  positions = _shape(hub_weights, 'pos_embed')[1] - 1
  grid = int(round(positions**0.5))
  if grid * grid != positions:
    raise ValueError(f'pos_embed has {positions} patch rows, not a square number')
  depth = 1 + max(int(m.group(1)) for k in hub_weights if (m := re.match(r'blocks\.(\d+)\.', k)))
  swiglu = 'blocks.0.mlp.w3.weight' in hub_weights
  mlp_dim = _shape(hub_weights, 'blocks.0.mlp.w3.weight' if swiglu else 'blocks.0.mlp.fc1.weight')[1 if swiglu else 0]
  registers = _shape(hub_weights, 'register_tokens')[1] if 'register_tokens' in hub_weights else 0
  return DINOv2(width=width, depth=depth, num_heads=num_heads or max(width // HEAD_DIM, 1), mlp_dim=mlp_dim,
                swiglu=swiglu, num_register_tokens=registers, position_grid=grid, **fields)


def position_fields(hf_layout, num_register_tokens):
  """Position resampling of the reference model of a file: transformers' for Hugging Face files (antialiased
  with registers), torch hub's for .pth files (antialiased with registers, else scale offset 0.1)."""
  if num_register_tokens:
    return {'interpolate_offset': 0.0, 'interpolate_antialias': True}
  return {'interpolate_offset': 0.0 if hf_layout else HUB_INTERPOLATE_OFFSET, 'interpolate_antialias': False}


# --- the pure converter -----------------------------------------------------------------------------------


def convert_state_dict(state_dict, num_heads=None):
  """(module, Flax params) from a DINOv2 state dict of numpy arrays in either layout; strict, float32."""
  hf_layout = is_hf_layout(state_dict)
  weights = {k: v for k, v in hub_state_dict(state_dict).items() if k not in IGNORED_KEYS}
  registers = _shape(weights, 'register_tokens')[1] if 'register_tokens' in weights else 0
  module = infer_module(weights, num_heads, **position_fields(hf_layout, registers))
  param_shapes = {path: leaf.shape for path, leaf in flatten_dict(abstract_params(module)).items()}
  expected = {hub_name(path): path for path in param_shapes}
  problems = weight_files.key_and_shape_problems(
      weight_files.array_shapes(weights),
      {name: weight_files.torch_shape(path, param_shapes[path]) for name, path in expected.items()})
  if problems:
    layout = 'Hugging Face layout, named after renaming to torch-hub keys' if hf_layout else 'torch-hub layout'
    raise ValueError(f'the DINOv2 state dict does not fit a {module.width}-wide, {module.depth}-block ViT/14 '
                     f'({layout}): ' + '; '.join(problems))
  params = unflatten_dict({
      path: np.array(weight_files.torch_to_flax(path, np.asarray(weights[name])), dtype=np.float32, order='C')
      for name, path in expected.items()
  })
  return module, params


# --- files ------------------------------------------------------------------------------------------------


def find_weights(path):
  """The weights file at `path` (a file, or a folder holding model.safetensors or pytorch_model.bin)."""
  if os.path.isdir(path):
    found = weight_files.hf_weights_in(path)
    if found:
      return found
    raise FileNotFoundError(f'no {" or ".join(weight_files.HF_WEIGHT_FILES)} in {path!r}; get one from {WHERE_TO_GET}')
  return path


def config_num_heads(weights_path):
  """num_attention_heads of a Hugging Face config.json beside the weights, or None."""
  return (weight_files.hf_config_beside(weights_path) or {}).get('num_attention_heads')


def convert_file(weights, out, num_heads=None):
  """Reads a DINOv2 checkpoint (file or Hugging Face folder), converts it and writes `out`; returns the module."""
  state_dict = weight_files.read_state_dict(find_weights(weights), f'Get it from {WHERE_TO_GET}.')
  module, params = convert_state_dict(state_dict, num_heads or config_num_heads(weights))
  save_dinov2(out, module, params)
  return module


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  convert_file(f.weights, f.out, f.num_heads)
  module, params = load_dinov2(f.out)
  n = sum(np.size(v) for v in jax.tree.leaves(params))
  print(f'wrote {f.out}: {n:,} parameters, {module}')


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('weights', None, 'torch-hub .pth, Hugging Face model.safetensors / pytorch_model.bin, or '
                      'a Hugging Face folder', required=True)
  flags.DEFINE_string('out', None, 'output .msgpack path', required=True)
  flags.DEFINE_integer('num_heads', None, 'attention heads (default: config.json, else width / 64)')
  app.run(main)

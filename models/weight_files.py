"""Reading public checkpoint files as {name: numpy array}, for the weight converters.

`.safetensors` and `.npz` need no PyTorch; a torch pickle (`.pt`, `.pth`, `.bin`) imports torch here
and nowhere else: training, sampling and evaluation never need it.
"""
import argparse
import json
import os

import numpy as np

# Training checkpoints keep the weights under one of these keys (DiT's train.py: 'ema' beside 'model' and
# 'opt'; Lightning-style files: 'state_dict'); the first one present is the one read.
NESTED_WEIGHT_KEYS = ('ema', 'state_dict', 'model')


def _is_tensor_dict(tree):
  return isinstance(tree, dict) and bool(tree) and all(hasattr(v, 'shape') for v in tree.values())


def _unwrap(tree, path):
  if _is_tensor_dict(tree):
    return tree
  if isinstance(tree, dict):
    for key in NESTED_WEIGHT_KEYS:
      if _is_tensor_dict(tree.get(key)):
        return tree[key]
    raise ValueError(f'{path} holds no state dict of tensors: its top-level keys are {sorted(tree)[:12]} '
                     f'(looked for a flat dict of tensors, or one under {list(NESTED_WEIGHT_KEYS)})')
  raise ValueError(f'{path} holds a {type(tree).__name__}, not a state dict')


def read_torch_file(path):
  """A torch pickle (.pt/.pth/.bin) as numpy; floating tensors become float32 (bf16/fp16 files too)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ModuleNotFoundError as e:
    if e.name != 'torch':  # torch is there, one of its own dependencies is not
      raise
    raise ImportError(
        f'reading {path} needs torch, which is not installed (a CPU build is enough: pip install torch '
        '--index-url https://download.pytorch.org/whl/cpu); a .safetensors file needs only safetensors',
        name='torch') from e
  # weights_only: no arbitrary code from the pickle; DiT's training checkpoints also hold their argparse args.
  with torch.serialization.safe_globals([argparse.Namespace]):
    tree = _unwrap(torch.load(path, map_location='cpu', weights_only=True), path)
  return {k: (v.float() if v.is_floating_point() else v).detach().numpy() for k, v in tree.items()}


def read_state_dict(path, missing_help=''):
  """{name: numpy array} from a .safetensors, .npz or torch file; a missing file names `missing_help`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path!r} does not exist. {missing_help}'.strip())
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return load_file(path)
  if path.endswith('.npz'):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  return read_torch_file(path)


def _listed(items, max_listed=8):
  items = sorted(items)
  more = f' and {len(items) - max_listed} more' if len(items) > max_listed else ''
  return ', '.join(items[:max_listed]) + more


def array_shapes(arrays):
  """{name: shape tuple} of a {name: array} dict, for key_and_shape_problems."""
  return {name: tuple(np.shape(value)) for name, value in arrays.items()}


def key_and_shape_problems(got, expected):
  """What differs between two {name: shape} dicts, as phrases naming the missing, unexpected and misshaped
  names (a few of each); [] if they agree. Every converter reports a file that does not fit through this."""
  problems = []
  if set(expected) - set(got):
    problems.append(f'missing keys: {_listed(set(expected) - set(got))}')
  if set(got) - set(expected):
    problems.append(f'unexpected keys: {_listed(set(got) - set(expected))}')
  misshaped = [
      f'{k} {tuple(got[k])} (expected {tuple(expected[k])})' for k in set(expected) & set(got)
      if tuple(got[k]) != tuple(expected[k])
  ]
  if misshaped:
    problems.append(f'misshaped keys: {_listed(misshaped)}')
  return problems


def torch_shape(flax_path, flax_shape):
  """Shape of the PyTorch tensor that becomes the Flax parameter at `flax_path`: a Dense kernel [in, out] is a Linear
  weight [out, in], a Conv kernel HWIO an OIHW weight; anything else keeps its shape."""
  if flax_path[-1] == 'kernel' and len(flax_shape) == 2:
    return tuple(flax_shape[::-1])
  if flax_path[-1] == 'kernel' and len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  return tuple(flax_shape)


def torch_to_flax(flax_path, tensor):
  """A PyTorch tensor (numpy) in the layout of the Flax parameter at `flax_path` (the inverse of `torch_shape`)."""
  if flax_path[-1] == 'kernel' and tensor.ndim == 2:
    return tensor.T
  if flax_path[-1] == 'kernel' and tensor.ndim == 4:
    return tensor.transpose(2, 3, 1, 0)
  return tensor


HF_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')  # a Hugging Face checkpoint folder's weights


def hf_weights_in(folder):
  """The first of HF_WEIGHT_FILES in `folder`, or None."""
  for name in HF_WEIGHT_FILES:
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def hf_config_beside(weights_path):
  """The Hugging Face config.json in the folder `weights_path` is or is in, as a dict; None when there is none."""
  folder = weights_path if os.path.isdir(weights_path) else os.path.dirname(weights_path)
  config_path = os.path.join(folder, 'config.json')
  if not os.path.isfile(config_path):
    return None
  with open(config_path) as f:
    return json.load(f)

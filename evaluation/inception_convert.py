"""Convert pytorch-fid's Inception weights to Flax variables for `evaluation.inception`.

The weights are pytorch-fid's port of TensorFlow's 2015-12-05 Inception graph; they cannot be
downloaded from this code. Fetch the file once and convert it:

  wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  python -m evaluation.inception_convert \
      --torch_weights=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.msgpack

Torch is needed only to read the .pth file. The mapping is mechanical: `A.B.conv.weight` (OIHW)
-> params[A][B]['conv']['kernel'] (HWIO); `bn.weight/bias` -> `bn.scale/bias`; `bn.running_mean/var`
-> batch_stats `bn.mean/var`; `fc.weight` [1008, 2048] -> `fc.kernel` [2048, 1008]. Every key and
shape is checked; `num_batches_tracked` buffers are ignored.
"""
import argparse
import functools
import os

import flax.serialization
import flax.traverse_util
import numpy as np

from evaluation import inception
from models import weight_files

TORCH_WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
TORCH_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/' + TORCH_WEIGHTS_NAME)
HOW_TO_GET_WEIGHTS = (f'Download {TORCH_WEIGHTS_NAME} (pytorch-fid\'s FID Inception weights) from {TORCH_WEIGHTS_URL} '
                      f'and convert it with `python -m evaluation.inception_convert --torch_weights=/path/to/'
                      f'{TORCH_WEIGHTS_NAME} --out=inception_fid.msgpack`, then pass the .msgpack path '
                      f'(or the .pth path itself, with torch installed).')
_IGNORED_SUFFIXES = ('num_batches_tracked',)

# (flax collection, flax leaf name) -> torch leaf name
_LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def _torch_layout(flax_shape):
  """Torch shape of a Flax leaf: HWIO conv kernel -> OIHW, [in, out] dense kernel -> [out, in]."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _to_flax_layout(array):
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:
    return array.T
  return array


def _to_torch_layout(array):
  if array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))
  if array.ndim == 2:
    return array.T
  return array


def key_mapping():
  """{torch key: ((collection, *flax path), flax shape)} for every tensor of the FID Inception."""
  return dict(_key_mapping())


@functools.lru_cache(maxsize=1)
def _key_mapping():
  shapes = inception.variable_shapes()
  mapping = {}
  for path, leaf in flax.traverse_util.flatten_dict(shapes).items():
    collection, *modules, leaf_name = path
    torch_key = '.'.join([*modules, _LEAF_NAMES[(collection, leaf_name)]])
    mapping[torch_key] = (path, tuple(leaf.shape))
  return mapping


def expected_state_dict_shapes():
  """{torch key: torch shape}: what `pt_inception-2015-12-05-6726825d.pth` holds."""
  return {key: _torch_layout(shape) for key, (_, shape) in key_mapping().items()}


def _check_keys_and_shapes(state_dict, expected_shapes):
  """Raise ValueError naming every missing, unexpected and misshaped key."""
  got = weight_files.array_shapes({k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)})
  problems = weight_files.key_and_shape_problems(got, expected_shapes)
  if problems:
    raise ValueError(f'not an FID Inception state dict (expected the layout of {TORCH_WEIGHTS_NAME}, from '
                     f'{TORCH_WEIGHTS_URL}): ' + '; '.join(problems))


def convert_state_dict(state_dict):
  """{torch key: numpy array} -> Flax variables {'params': ..., 'batch_stats': ...} (float32)."""
  mapping = key_mapping()
  _check_keys_and_shapes(state_dict, {k: _torch_layout(s) for k, (_, s) in mapping.items()})
  flat = {
      path: np.ascontiguousarray(_to_flax_layout(np.asarray(state_dict[key], np.float32)))
      for key, (path, _) in mapping.items()
  }
  return flax.traverse_util.unflatten_dict(flat)


def to_state_dict(variables):
  """Inverse of `convert_state_dict`: Flax variables -> {torch key: numpy array}."""
  flat = flax.traverse_util.flatten_dict(variables)
  return {key: _to_torch_layout(np.asarray(flat[path])) for key, (path, _) in key_mapping().items()}


def random_state_dict(seed=0):
  """A random torch-layout state dict with the real keys and shapes and sane scales (for tests and
  benchmarks): He-scaled conv weights, BatchNorm stats near identity."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in expected_state_dict_shapes().items():
    leaf = key.rsplit('.', 1)[-1]
    if len(shape) == 4:
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif len(shape) == 2:
      value = rng.standard_normal(shape) / np.sqrt(shape[1])
    elif leaf in ('running_var', 'weight'):
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias, running_mean
      value = 0.1 * rng.standard_normal(shape)
    state[key] = value.astype(np.float32)
  return state


def _missing_file_error(path):
  return FileNotFoundError(f'FID Inception weights not found at {path!r}. {HOW_TO_GET_WEIGHTS}')


def read_torch_state_dict(path):
  """Read a .pth state dict into {key: numpy array}; torch is imported only there."""
  if not os.path.exists(path):
    raise _missing_file_error(path)
  return weight_files.read_torch_file(path)


def save_variables(variables, path):
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(variables))


def load_inception_params(path):
  """Flax variables of the FID Inception from a converted .msgpack (or, with torch, the .pth)."""
  if not os.path.exists(path):
    raise _missing_file_error(path)
  if path.endswith('.pth'):
    return convert_state_dict(read_torch_state_dict(path))
  with open(path, 'rb') as f:
    variables = flax.serialization.msgpack_restore(f.read())
  # Check via the torch layout so a wrong or truncated file fails naming the keys.
  flat = flax.traverse_util.flatten_dict(variables)
  mapping = key_mapping()
  known_paths = {flax_path for flax_path, _ in mapping.values()}
  state_dict = {
      key: _to_torch_layout(np.asarray(flat[flax_path])) for key, (flax_path, _) in mapping.items() if flax_path in flat
  }
  state_dict.update({'/'.join(p): np.asarray(v) for p, v in flat.items() if p not in known_paths})
  return convert_state_dict(state_dict)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--torch_weights', default=TORCH_WEIGHTS_NAME,
                      help=f'path to {TORCH_WEIGHTS_NAME} (from {TORCH_WEIGHTS_URL})')
  parser.add_argument('--out', default='inception_fid.msgpack', help='output .msgpack path')
  args = parser.parse_args(argv)
  variables = convert_state_dict(read_torch_state_dict(args.torch_weights))
  save_variables(variables, args.out)
  print(f'wrote {args.out}: {inception.count_params(variables):,} parameters')


if __name__ == '__main__':
  main()

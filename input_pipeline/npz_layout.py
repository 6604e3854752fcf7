"""The ADM npz layout that samples and reference batches share: checks that name the file and what it holds."""
import zipfile

import numpy as np


def check_npz(path, what):
  """Raises unless `path` is an npz (the zip of .npy arrays np.savez writes) rather than an .npy or other file."""
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path}: not an .npz file (np.savez writes one; a .npy holds a single array): {what}')


def image_layout_error(dtype, shape):
  """'' if (dtype, shape) is uint8 [N, H, W, 1 or 3] with N > 0, else what is wrong."""
  if np.dtype(dtype) != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or not shape[0]:
    return f'need uint8 images [N, H, W, 1 or 3], got {np.dtype(dtype)} {tuple(shape)}'
  return ''


def member_header(path, key):
  """(shape, dtype) of array `key` of an npz, read from its .npy header without loading the data."""
  with zipfile.ZipFile(path) as archive, archive.open(f'{key}.npy') as member:
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(member)
  return shape, dtype

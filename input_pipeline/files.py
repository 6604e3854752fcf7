"""Files that jobs read and write: ADM-layout sample npz files, PNG images, JSON records.

Every write goes through `atomic_write`: to a temporary file beside the target, then renamed over it, so a
crash or a full disk never leaves a half-written result in place of a good one.
"""
import contextlib
import json
import os

import numpy as np

from input_pipeline import npz_layout


@contextlib.contextmanager
def atomic_write(path, suffix=''):
  """Yields a temporary path beside `path` (ending in `suffix`, for writers that choose the format by the
  extension); renames it over `path` when the block ends without an error, removes it otherwise."""
  tmp = f'{path}.tmp{suffix}'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def refuse_existing(path, overwrite, hint):
  """Raises FileExistsError for an existing `path` unless overwrite: a written result is never lost."""
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} exists; pass --overwrite to replace it, or {hint}')


def check_images(images, where):
  """Raises unless `images` is uint8 [N, H, W, C] with C = 1 or 3 and N > 0."""
  error = npz_layout.image_layout_error(images.dtype, images.shape)
  if error:
    raise ValueError(f'{where}: {error}')


def load_samples_npz(path):
  """(images, cond) from an ADM-layout npz: `arr_0` uint8 NHWC; `arr_1` labels -> cond['y'] and a str array
  `prompts` -> cond['prompts'] when present."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path!r}: no such npz file (--mode=sample writes one)')
  npz_layout.check_npz(path, "samples need 'arr_0', uint8 NHWC images (as --mode=sample writes)")
  with np.load(path) as data:
    if 'arr_0' not in data.files:
      raise ValueError(f"{path}: no 'arr_0' (uint8 NHWC images); the file has {sorted(data.files)}")
    images = data['arr_0']
    cond = {}
    if 'arr_1' in data.files:
      cond['y'] = data['arr_1'].astype(np.int32)
    if 'prompts' in data.files:
      cond['prompts'] = data['prompts']
  check_images(images, path)
  for key, value in cond.items():
    if len(value) != len(images):
      raise ValueError(f"{path}: {len(images)} images but {len(value)} entries in cond['{key}']")
  return images, cond


def write_json(path, record):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with atomic_write(path) as tmp, open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
    f.write('\n')


def write_png(path, image, min_side=512):
  """Writes an RGB uint8 image, upscaled by an integer factor (nearest) so small samples are visible."""
  from PIL import Image  # pylint: disable=g-import-not-at-top (start-up: PIL only where an image is written)
  factor = max(1, min_side // min(image.shape[:2]))
  img = Image.fromarray(image)
  if factor > 1:
    img = img.resize((image.shape[1] * factor, image.shape[0] * factor), Image.NEAREST)
  with atomic_write(path, '.png') as tmp:
    img.save(tmp)


def write_npz(path, images, labels, prompts=None):
  """ADM evaluator layout: arr_0 uint8 NHWC, arr_1 labels (and `prompts`, a str array, for text models).
  Written to a temporary file, then renamed."""
  extra = {} if prompts is None else {'prompts': np.asarray(prompts, str)}
  with atomic_write(path, '.npz') as tmp:
    np.savez(tmp, arr_0=images, arr_1=labels, **extra)

"""config.data.random_crop: guided-diffusion's random_crop_arr, its randomness a function of (seed, step)."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from configs.validate import validate_config
from input_pipeline import StepBatcher, create_source
from input_pipeline.images import center_crop_resize, random_crop_resize
from tests.tiny import tiny_unet_config


def test_crop_of_an_image_at_its_drawn_size_is_a_slice():
  """An image whose short side is the drawn one is not resized: the crop is the array slice the draws name."""
  arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  size = 16  # short sides drawn from 16 ... ceil(16 / 0.8) = 20
  for draws, (top, left) in [((0.99, 0.0, 0.0), (0, 0)), ((0.99, 0.99, 0.99), (4, 14)), ((0.81, 0.5, 0.3), (2, 4))]:
    np.testing.assert_array_equal(random_crop_resize(Image.fromarray(arr), size, draws), arr[top:top + size,
                                                                                             left:left + size])


def test_short_side_and_offsets_cover_their_ranges_uniformly():
  """Over many draws the short side takes each of size ... ceil(size / 0.8) equally often, and the crop sits
  anywhere it fits: on a 64 x 96 ramp (value = column) the crop's first column spans the whole row."""
  size = 16
  ramp = np.tile(np.arange(96, dtype=np.uint8), (64, 1))
  rng = np.random.default_rng(0)
  draws = rng.random((3000, 3))
  shorts = size + (draws[:, 0] * (math.ceil(size / 0.8) - size + 1)).astype(int)
  counts = np.bincount(shorts - size)
  assert len(counts) == 5 and counts.min() > 0.8 * 3000 / 5
  crops = [random_crop_resize(Image.fromarray(ramp), size, d) for d in draws[:300]]
  assert all(c.shape == (size, size, 1) for c in crops)
  first_columns = [int(c[0, 0, 0]) for c in crops]
  # at short side s the image is 1.5 s wide; the first column spans [0, 1.5 s - size] in s-pixel units
  assert min(first_columns) <= 3 and max(first_columns) >= 96 * (1 - size / 24) - 6


def test_zero_draws_equal_the_centre_crop_resize_at_the_top_left():
  """draws (0, 0, 0): the short side is `size`, as in the centre crop, and the crop is the top-left one."""
  arr = np.random.default_rng(1).integers(0, 256, (70, 40, 3), dtype=np.uint8)  # short side < 2 x 24: no box halving
  crop = random_crop_resize(Image.fromarray(arr), 24, (0.0, 0.0, 0.0))
  resized = np.asarray(Image.fromarray(arr).resize((24, 42), Image.BICUBIC))
  np.testing.assert_array_equal(crop, resized[:24])
  np.testing.assert_array_equal(center_crop_resize(Image.fromarray(arr), 24), resized[9:33])


def image_folder(tmp_path, n=12):
  rng = np.random.default_rng(0)
  for i in range(n):
    os.makedirs(tmp_path / f'class{i % 2}', exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(tmp_path / f'class{i % 2}/{i}.png')
  c = tiny_unet_config()
  c.data.update(source='image_folder', path=str(tmp_path), image_size=16, channels=3, num_classes=2, random_crop=True)
  return validate_config(c)


def test_batches_are_a_function_of_seed_and_step_and_split_across_hosts(tmp_path):
  c = image_folder(tmp_path)
  source = create_source(c.data)
  batcher = StepBatcher(source, 8, seed=3, random_crop=True)
  a, again, other = batcher.batch(5), StepBatcher(source, 8, seed=3, random_crop=True).batch(5), batcher.batch(6)
  np.testing.assert_array_equal(a['image'], again['image'])
  assert a['image'].shape == (8, 16, 16, 3)
  centre = StepBatcher(source, 8, seed=3).batch(5)
  np.testing.assert_array_equal(centre['label'], a['label'])  # the same examples, cropped otherwise
  assert np.abs(centre['image'] - a['image']).mean() > 0.05
  assert not np.array_equal(StepBatcher(source, 8, seed=4, random_crop=True).batch(5)['image'], a['image'])
  assert other['image'].shape == a['image'].shape
  hosts = [
      StepBatcher(source, 8, seed=3, process_index=h, process_count=2, random_crop=True).batch(5) for h in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in hosts]), a['image'])


def test_random_crop_needs_a_decoding_source(tmp_path):
  c = tiny_unet_config()
  c.data.random_crop = True
  with pytest.raises(
      ValueError, match=r"config\.data\.random_crop=True crops images as they are decoded: it needs "
      r"data\.source 'image_folder' or 'tfds' without captions \(got "
      r"source='digits'"):
    validate_config(c)
  from configs.adm_classifier import get_config
  assert get_config('64').data.random_crop  # as guided-diffusion's classifier_train.py


def test_decoding_threads_give_the_same_batch(tmp_path):
  """data.num_workers threads decode in order: the batch is that of one thread, crops included."""
  from input_pipeline.sources import ImageFolderSource
  c = image_folder(tmp_path)
  one, four = (ImageFolderSource(c.data.path, 16, 3, num_workers=n) for n in (1, 4))
  indices = np.asarray([5, 0, 11, 3, 3, 7])
  draws = np.random.default_rng(0).random((6, 3))
  for crop in (None, draws):
    a, b = one.get(indices, crop), four.get(indices, crop)
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])

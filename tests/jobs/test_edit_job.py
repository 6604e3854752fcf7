"""--mode=edit (edit.py): inpainting and img2img of image files with a trained checkpoint."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jobs import edit
from jobs import train
from tests.tiny import tiny_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny U-Net trained 4 steps on the digits, three 8x8 grey PNGs and a mask repainting the right half."""
  root = tmp_path_factory.mktemp('edit')
  config = tiny_unet_config()
  train.train_and_evaluate(config, str(root / 'run'))
  os.makedirs(root / 'images')
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / 'images' / f'{i}.png')
  mask = np.zeros((16, 16), np.uint8)  # any size: resized (nearest) to 8x8
  mask[:, 8:] = 255
  Image.fromarray(mask).save(root / 'mask.png')
  return config, root


def images_in(root):
  return np.stack([np.asarray(Image.open(root / 'images' / f'{i}.png'))[..., None] for i in range(3)])


def test_inpainting_keeps_the_unmasked_pixels_exactly_and_repaints_the_rest(run):
  config, root = run
  path = edit.run_edit_job(config, str(root / 'run'), str(root / 'images'), mask=str(root / 'mask.png'), labels='7')
  assert path == str(root / 'run' / 'edits' / 'images_inpaint.npz') and os.path.isfile(path[:-4] + '.png')
  with np.load(path) as out:
    edited, inputs, keep, labels = out['arr_0'], out['inputs'], out['keep'], out['arr_1']
  np.testing.assert_array_equal(inputs, images_in(root))
  assert edited.shape == (3, 8, 8, 1) and edited.dtype == np.uint8
  assert keep[:, :4].all() and not keep[:, 4:].any()
  np.testing.assert_array_equal(edited[:, :, :4], inputs[:, :, :4])
  assert np.abs(edited[:, :, 4:].astype(int) - inputs[:, :, 4:]).mean() > 10  # noise in, a new right half out
  np.testing.assert_array_equal(labels, [7, 7, 7])
  # the same command again (with --overwrite) gives the same images: noise comes from config.sample.seed
  edit.run_edit_job(config, str(root / 'run'), str(root / 'images'), mask=str(root / 'mask.png'), labels='7',
                    overwrite=True)
  with np.load(path) as again:
    np.testing.assert_array_equal(again['arr_0'], edited)


def test_img2img_strength_zero_is_the_input_and_strength_sets_the_change(run):
  config, root = run
  inputs = images_in(root)
  change = {}
  for strength in (0.0, 0.5, 1.0):
    path = edit.run_edit_job(config, str(root / 'run'), str(root / 'images' / '1.png'), strength=strength,
                             name=f'one_{strength}')
    with np.load(path) as out:
      assert out['arr_0'].shape == (1, 8, 8, 1) and 'keep' not in out
      change[strength] = np.abs(out['arr_0'].astype(int) - inputs[1:2]).mean()
      np.testing.assert_array_equal(out['arr_1'], [-1])  # no label given: the null label
  assert change[0.0] == 0 and 0 < change[0.5] and change[0.5] < change[1.0]


def test_bad_edit_inputs_fail_before_anything_is_written(run):
  config, root = run
  workdir, images, mask = str(root / 'run'), str(root / 'images'), str(root / 'mask.png')
  black = root / 'black.png'
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(black)
  cases = [
      (dict(strength=1.5), ValueError, r'--strength=1\.5 must be in \[0, 1\]'),
      (dict(labels='12'), ValueError, r'--labels=12: .*\[0, 10\)'),
      (dict(labels='1,2'), ValueError, r'one per image \(3\)'),
      (dict(prompt='a seven'), ValueError, 'not text-conditional'),
      (dict(mask=str(black)), ValueError, 'black everywhere'),
      (dict(mask=str(root / 'nope.png')), FileNotFoundError, r"--mask=.*nope\.png"),
  ]
  for kwargs, error, message in cases:
    with pytest.raises(error, match=message):
      edit.run_edit_job(config, workdir, images, name='bad', **kwargs)
  with pytest.raises(FileNotFoundError, match=r"--images=.*missing"):
    edit.run_edit_job(config, workdir, str(root / 'missing'), name='bad')
  heun = config.copy_and_resolve_references()
  heun.sample.sampler = 'heun'
  with pytest.raises(ValueError, match=r"sampler='heun': inpainting supports ddim, ddpm"):
    edit.run_edit_job(heun, workdir, images, mask=mask, name='bad')
  karras = config.copy_and_resolve_references()
  karras.sample.sampler, karras.sample.spacing = 'dpm++2m', 'karras'
  with pytest.raises(ValueError, match=r"spacing='karras': editing starts at an integer timestep"):
    edit.run_edit_job(karras, workdir, images, strength=0.5, name='bad')
  assert not os.path.exists(root / 'run' / 'edits' / 'bad.npz')
  # an existing result is refused without --overwrite and left as it was
  first = edit.run_edit_job(config, workdir, images, strength=0.3, name='kept')
  before = open(first, 'rb').read()
  with pytest.raises(FileExistsError, match='--overwrite'):
    edit.run_edit_job(config, workdir, images, strength=0.9, name='kept')
  assert open(first, 'rb').read() == before


def test_a_mask_is_centre_cropped_as_its_image_is(tmp_path):
  """A 40x20 image becomes its middle 20x20, scaled to 8x8; its mask, repainting the right 15 columns, must repaint
  the same pixels of that crop: the 5 of its 20 columns right of the middle, 2 of 8 (squashing the mask gave 3)."""
  mask = np.zeros((20, 40), np.uint8)
  mask[:, 25:] = 255
  Image.fromarray(mask).save(tmp_path / 'mask.png')
  image = np.repeat(np.arange(40, dtype=np.uint8)[None, :, None] * 6, 20, axis=0).repeat(3, -1)
  Image.fromarray(image).save(tmp_path / 'image.png')
  keep = edit.read_keep_mask(str(tmp_path / 'mask.png'), 8)
  assert keep.shape == (8, 8, 1) and (keep == keep[:1]).all()
  assert keep[0, :, 0].tolist() == [True] * 6 + [False] * 2
  column = edit.read_images(str(tmp_path / 'image.png'), 8, 3)[0, 0, :, 0] / 6  # the source column of each pixel
  assert (column[:6] < 25.5).all() and (column[6:] > 25).all(), column


def test_latent_keep_mask_keeps_only_whole_patches():
  keep = np.ones((8, 8, 1), bool)
  keep[3, 5] = False  # one repainted pixel: its 4x4 patch (rows 0-3, cols 4-7) is repainted in the latent
  np.testing.assert_array_equal(edit.latent_keep_mask(keep, 2)[..., 0], [[True, False], [True, True]])


def test_edit_mode_from_the_command_line(run):
  _, root = run
  result = subprocess.run([
      sys.executable, 'main.py', '--mode=edit', '--config=tests/tiny_config.py', f'--workdir={root / "run"}',
      f'--images={root / "images"}', f'--mask={root / "mask.png"}', '--labels=0,1,2', '--edit_name=cli'
  ], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  with np.load(root / 'run' / 'edits' / 'cli.npz') as out:
    np.testing.assert_array_equal(out['arr_1'], [0, 1, 2])
  result = subprocess.run([
      sys.executable, 'main.py', '--mode=edit', '--config=tests/tiny_config.py', f'--workdir={root / "run"}',
      f'--images={root / "images"}', '--strength=2'
  ], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and '--strength=2.0 must be in [0, 1]' in result.stderr

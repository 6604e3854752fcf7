"""TFDS sources on datasets prepared in ArrayRecord format (tests/tfds_datasets.py), read as training reads them."""
import ml_collections
import numpy as np
from PIL import Image
import pytest

pytest.importorskip('tensorflow_datasets')
pytest.importorskip('array_record')

from input_pipeline import StepBatcher, create_source  # pylint: disable=wrong-import-position
from input_pipeline.images import (
    center_crop_resize,
    random_crop_resize,  # pylint: disable=wrong-import-position
    to_unit_range)
from tests import tfds_datasets  # pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  tfds_datasets.prepare_images(path)
  tfds_datasets.prepare_coco_captions(path)
  return str(path)


def data_config(data_dir, **overrides):
  c = ml_collections.ConfigDict(
      dict(source='tfds', name='tiny_images', split='train', image_size=8, channels=3,
           num_classes=tfds_datasets.NUM_CLASSES, num_workers=1, tfds_data_dir=data_dir, captions=False))
  c.update(overrides)
  return c


def expected_images(indices, size, mode='RGB', draws=None):
  """What the source must return for the generated examples `indices`: PIL's conversion, then the crop."""
  out = []
  for j, i in enumerate(indices):
    pil = Image.fromarray(tfds_datasets.example_image(int(i))).convert(mode)
    out.append(center_crop_resize(pil, size) if draws is None else random_crop_resize(pil, size, draws[j]))
  return to_unit_range(np.stack(out))


def test_a_prepared_dataset_reads_by_index_as_its_examples_were_written(data_dir):
  source = create_source(data_config(data_dir))
  assert len(source) == 9
  indices = np.asarray([4, 0, 8, 4, 2])
  assert sorted(int(r['index']) for r in source.records(range(9))) == list(range(9))
  written = [int(r['index']) for r in source.records(indices)]  # TFDS shuffles the records as it writes them
  batch = source.get(indices)
  assert batch['image'].shape == (5, 8, 8, 3) and batch['image'].dtype == np.float32
  np.testing.assert_array_equal(batch['image'], expected_images(written, 8))
  np.testing.assert_array_equal(batch['label'], np.asarray(written) % tfds_datasets.NUM_CLASSES)
  assert batch['label'].dtype == np.int32
  grey = create_source(data_config(data_dir, channels=1, image_size=6)).get(indices)
  np.testing.assert_array_equal(grey['image'], expected_images(written, 6, mode='L'))
  assert len(create_source(data_config(data_dir, split='test'))) == 3
  assert len(create_source(data_config(data_dir, split='train[:4]'))) == 4


def test_crops_flips_threads_and_hosts_on_a_tfds_source(data_dir):
  source = create_source(data_config(data_dir, image_size=10))
  threaded = create_source(data_config(data_dir, image_size=10, num_workers=4))
  indices, draws = np.asarray([1, 7, 3, 3, 0, 5]), np.random.default_rng(0).random((6, 3))
  written = [int(r['index']) for r in source.records(indices)]
  for crop in (None, draws):
    batch = source.get(indices, crop)
    np.testing.assert_array_equal(batch['image'], expected_images(written, 10, draws=crop))
    np.testing.assert_array_equal(threaded.get(indices, crop)['image'], batch['image'])
  batcher = StepBatcher(source, 6, seed=1, random_flip=True, random_crop=True)
  whole = batcher.batch(4)
  hosts = [
      StepBatcher(source, 6, seed=1, random_flip=True, random_crop=True, process_index=h, process_count=3).batch(4)
      for h in range(3)
  ]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in hosts]), whole['image'])
  centre = StepBatcher(source, 6, seed=1).batch(4)
  np.testing.assert_array_equal(centre['label'], whole['label'])
  assert np.abs(centre['image'] - whole['image']).mean() > 0.05


def test_coco_captions_gives_each_image_with_each_of_its_first_five_captions(data_dir):
  for name in ('coco_captions', 'coco_captions/2014', 'coco_captions/2014:1.1.0'):
    source = create_source(data_config(data_dir, name=name, captions=True, num_classes=0), tokenize=False)
    assert len(source) == 20  # 4 images (5 or 6 captions each) x 5
  batch = source.get(np.arange(20))
  images = source.images.records(np.arange(4))
  ids = [int(r['image/id']) for r in images]
  assert sorted(ids) == [0, 1, 2, 3]
  assert batch['caption'].tolist() == [tfds_datasets.caption(i, c) for i in ids for c in range(5)]
  np.testing.assert_array_equal(batch['image'], expected_images(np.repeat(ids, 5), 8))
  np.testing.assert_array_equal(batch['label'], np.zeros(20))


def test_a_label_beyond_num_classes_or_no_label_for_a_conditional_model_fails_at_start(data_dir, tmp_path):
  with pytest.raises(
      ValueError, match=r"TFDS dataset 'tiny_images' has 3 classes but config\.data\.num_classes=2: "
      r'.*--config\.data\.num_classes=3'):
    create_source(data_config(data_dir, num_classes=2))
  assert len(create_source(data_config(data_dir, num_classes=0))) == 9  # unconditional: labels unused
  with pytest.raises(
      ValueError, match=r"TFDS dataset 'coco_captions' has no 'label' feature, so it cannot train a "
      r'class-conditional model \(config\.data\.num_classes=3\); set '
      r'--config\.data\.num_classes=0'):
    create_source(data_config(data_dir, name='coco_captions'))
  assert create_source(data_config(data_dir, name='coco_captions', num_classes=0)).get([0])['label'].tolist() == [0]
  for c in range(3):
    (tmp_path / f'class{c}').mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f'class{c}/0.png')
  folder = ml_collections.ConfigDict(
      dict(source='image_folder', path=str(tmp_path), image_size=8, channels=3, num_classes=2))
  with pytest.raises(ValueError, match=r"the image folder '.*' has 3 classes but config\.data\.num_classes=2"):
    create_source(folder)


def test_a_dataset_not_prepared_names_the_command_that_prepares_it(data_dir):
  with pytest.raises(
      RuntimeError, match=r"(?s)could not open TFDS dataset 'cifar10' split 'train' in '.*' .*"
      r'tfds build cifar10 --file_format=array_record.*tfds_data_dir'):
    create_source(data_config(data_dir, name='cifar10'))
  with pytest.raises(RuntimeError, match=r"split 'validation'"):
    create_source(data_config(data_dir, split='validation'))


def test_the_encode_and_fid_stats_jobs_read_a_latent_models_tfds_pixels_from_tfds_data_dir(data_dir):
  """A latent model's images (config.data.pixels, what --mode=encode encodes and --mode=fid_stats reads) come from
  TFDS in config.data.tfds_data_dir."""
  from configs.default import base_config
  from jobs import encode, fid_stats
  c = base_config()
  c.data.update(source='latents', path='/unused', tfds_data_dir=data_dir, num_workers=2)
  c.data.pixels.update(source='tfds', name='tiny_images', split='train', image_size=8)
  for pixels in (encode.pixel_data_config(c), fid_stats.pixel_data_config(c.data)):
    source = create_source(pixels, tokenize=False)
    assert len(source) == 9 and source.get(np.arange(3))['image'].shape == (3, 8, 8, 3)
  chunks, total, _ = fid_stats.dataset_image_chunks(c.data)
  assert total == 9 and np.concatenate(list(chunks)).shape == (9, 8, 8, 3)

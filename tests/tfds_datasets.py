"""Small TFDS datasets prepared for the tests in ArrayRecord format, with tensorflow-datasets alone (no TensorFlow:
the images are handed to TFDS already PNG-encoded). Importing this module needs tensorflow-datasets; the tests
`pytest.importorskip` it first.

- `prepare_images`: images of mixed sizes with a 3-class 'label' and an 'index' feature telling which
  generated example a record is (TFDS shuffles the records as it writes them).
- `prepare_coco_captions`: a dataset with coco_captions' name, config (2014), version and features
  (object_detection/coco_captions.py in TFDS: image, image/filename, image/id, objects, captions {text, id}),
  with 5 or 6 captions per image as in COCO.
"""
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NUM_CLASSES = 3


def png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def example_image(i):
  """The uint8 image of example i: sizes vary, grey every third one (stored as RGB, as TFDS stores ImageNet's)."""
  rng = np.random.default_rng(i)
  image = rng.integers(0, 256, (12 + 3 * i, 16 + 2 * (i % 3), 3), dtype=np.uint8)
  if i % 3 == 2:
    image[...] = image[..., :1]
  return image


def caption(i, c):
  return f'image {i}, caption {c}'


class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES), 'index': np.int64
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(range(0, 9)), 'test': self._generate_examples(range(9, 12))}

  def _generate_examples(self, indices):
    for i in indices:
      yield i, {'image': png(example_image(i)), 'label': i % NUM_CLASSES, 'index': i}


class CocoCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  name = 'coco_captions'
  VERSION = tfds.core.Version('1.1.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='2014')]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image':
                tfds.features.Image(encoding_format='jpeg'), 'image/filename':
                    tfds.features.Text(), 'image/id':
                        np.int64, 'objects':
                            tfds.features.Sequence({
                                'id': np.int64, 'area': np.int64, 'bbox': tfds.features.BBoxFeature(),
                                'label': tfds.features.ClassLabel(num_classes=80), 'is_crowd': np.bool_
                            }), 'captions':
                                tfds.features.Sequence({'text': np.str_, 'id': np.int64})
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(4)}

  def _generate_examples(self, count):
    for i in range(count):
      n = 5 + i % 2
      yield i, {
          'image': png(example_image(i)), 'image/filename': f'COCO_train2014_{i:012d}.jpg', 'image/id': i,
          'objects': {'id': [], 'area': [], 'bbox': np.zeros((0, 4), np.float32), 'label': [], 'is_crowd': []},
          'captions': {'text': [caption(i, c) for c in range(n)], 'id': list(range(10 * i, 10 * i + n))}
      }


def prepare(builder_class, data_dir):
  tfds.disable_progress_bar()
  builder = builder_class(data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare()
  return builder


def prepare_images(data_dir):
  return prepare(TinyImages, data_dir)


def prepare_coco_captions(data_dir):
  return prepare(CocoCaptions, data_dir)

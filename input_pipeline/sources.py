"""Random-access data sources: `len(source)` and `source.get(indices) -> {'image', 'label'}`.

Images come out float32 NHWC in [-1, 1] (latents in their stored dtype, usually float16), labels
int32. Random access by index is what lets the loader compute any step's batch from (seed, step)
alone, so resuming needs no iterator state and every host can read its own slice.
"""
import importlib.util
import io
import os

import numpy as np

from input_pipeline.captions import CocoCaptionsSource, TokenizedCaptions, with_captions
from input_pipeline.images import IMAGE_EXTENSIONS, decode_image, image_mode, map_threads, resize_images, to_unit_range
from input_pipeline.latents import LatentSource


class ArraySource:
  """Images and labels held in memory."""
  def __init__(self, images, labels):
    self.images, self.labels = images, labels.astype(np.int32)

  def __len__(self):
    return len(self.labels)

  def get(self, indices):
    return {'image': self.images[indices], 'label': self.labels[indices]}


def load_digits():
  """scikit-learn's 1,797 8x8 handwritten digits: (images float64 [1797, 8, 8] in 0..16, labels int [1797]).

  Read from the file scikit-learn ships (sklearn/datasets/data/digits.csv.gz, a row of 64 pixels and the label per
  digit) without importing scikit-learn, which takes 1.6 s of a run's start-up for this 100 KB table.
  """
  spec = importlib.util.find_spec('sklearn')
  if spec is None:
    raise ModuleNotFoundError('the digits dataset ships with scikit-learn: pip install -r requirements.txt')
  path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', 'digits.csv.gz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing, where scikit-learn keeps the digits dataset; reinstall scikit-learn '
                            '(pip install --force-reinstall scikit-learn)')
  table = np.loadtxt(path, delimiter=',')
  return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def digits_source(image_size=8, channels=1):
  """scikit-learn's 1,797 8x8 handwritten digits (values 0..16), ships with the package; offline."""
  if channels not in (1, 3):
    raise ValueError(f'config.data.channels={channels}: the digits dataset has 1 channel (or 3, replicated)')
  digits, labels = load_digits()
  images = np.round(digits * (255.0 / 16.0)).astype(np.uint8)[..., None]
  if image_size != 8:
    images = resize_images(images, image_size)
  if channels == 3:
    images = np.repeat(images, 3, axis=-1)
  return ArraySource(to_unit_range(images), labels)


def check_class_count(classes, data_config, what, labelled=True):
  """Labels of `classes` classes (None: not known) fit the model's config.data.num_classes (0: unconditional,
  labels unused), and a class-conditional model has labels to read (`labelled`)."""
  wanted = data_config.get('num_classes', 0)
  if wanted > 0 and not labelled:
    raise ValueError(f"{what} has no 'label' feature, so it cannot train a class-conditional model "
                     f'(config.data.num_classes={wanted}); set --config.data.num_classes=0 to train unconditionally')
  if classes is not None and 0 < wanted < classes:
    raise ValueError(f'{what} has {classes} classes but config.data.num_classes={wanted}: labels {wanted} and up '
                     f'would fall outside the class embedding; set --config.data.num_classes={classes} (or 0 to '
                     'train unconditionally)')


class ImageFolderSource:
  """root/<class name>/<image files>; classes sorted by name get labels 0, 1, ...; decoded on demand."""
  def __init__(self, root, image_size, channels=3, num_workers=1):
    if not os.path.isdir(root):
      raise FileNotFoundError(f'config.data.path={root!r} is not a directory; point it at a folder with one '
                              'subfolder of images per class')
    self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    self.files, labels = [], []
    for label, name in enumerate(self.classes):
      for f in sorted(os.listdir(os.path.join(root, name))):
        if f.lower().endswith(IMAGE_EXTENSIONS):
          self.files.append(os.path.join(root, name, f))
          labels.append(label)
    if not self.files:
      raise ValueError(f'config.data.path={root!r} holds no images in class subfolders '
                       f'(looked for {", ".join(IMAGE_EXTENSIONS)} files in <path>/<class>/)')
    self.labels = np.asarray(labels, np.int32)
    self.image_size, self.mode, self.num_workers = image_size, image_mode(channels), num_workers

  def __len__(self):
    return len(self.files)

  def get(self, indices, crop_draws=None):
    """crop_draws: [len(indices), 3] in [0, 1) for random crops (`random_crop_resize`); None: centre crops."""
    images = np.stack(
        map_threads(
            lambda j: decode_image(self.files[indices[j]], self.mode, self.image_size, None
                                   if crop_draws is None else crop_draws[j]), range(len(indices)), self.num_workers))
    return {'image': to_unit_range(images), 'label': self.labels[indices]}


class TfdsSource:
  """A prepared TFDS dataset read by index (ArrayRecord files). The builder is restored from the prepared files
  (`features.json`, `dataset_info.json`), not from its generation code, so reading needs tensorflow-datasets and
  array_record but not TensorFlow (some builders' code imports it, coco_captions' among them). The records'
  images stay encoded until the num_workers threads decode, convert and resize them."""
  def __init__(self, name, split, image_size, channels=3, num_workers=1, data_dir=''):
    try:
      import tensorflow_datasets as tfds
      from tensorflow_datasets.core import read_only_builder
    except ImportError as e:
      raise ImportError(f"config.data.source='tfds' needs tensorflow-datasets and array_record: pip install -r "
                        f"requirements-tfds.txt (and tensorflow to prepare {name!r} once)") from e
    where = f'in {data_dir!r}' if data_dir else 'in $TFDS_DATA_DIR or ~/tensorflow_datasets'
    try:
      builder = read_only_builder.builder_from_files(name, data_dir=data_dir or None)
      self.data = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    except Exception as e:
      raise RuntimeError(f'could not open TFDS dataset {name!r} split {split!r} {where} for random access ({e}). '
                         f'Prepare it once in ArrayRecord format: tfds build {name} --file_format=array_record '
                         '(ImageNet needs its archives in the manual_dir first; see the TFDS catalog), or point '
                         '--config.data.tfds_data_dir at where it was prepared') from e
    features = self.data.dataset_info.features
    if 'image' not in features:
      raise ValueError(f'TFDS dataset {name!r} has no "image" feature (it has {", ".join(features)})')
    label = features['label'] if 'label' in features else None
    self.num_classes = getattr(label, 'num_classes', None)
    self.has_labels = label is not None
    self.image_size, self.mode, self.num_workers = image_size, image_mode(channels), num_workers

  def __len__(self):
    return len(self.data)

  def records(self, indices):
    """The records of `indices`, their images still encoded (one batched ArrayRecord read)."""
    return self.data.__getitems__([int(i) for i in indices])

  def images(self, records, crop_draws=None):
    """uint8 [len(records), size, size, C]: the records' images decoded and resized on num_workers threads."""
    return np.stack(
        map_threads(
            lambda j: decode_image(io.BytesIO(records[j]['image']), self.mode, self.image_size, None
                                   if crop_draws is None else crop_draws[j]), range(len(records)), self.num_workers))

  def get(self, indices, crop_draws=None):
    """crop_draws as in `ImageFolderSource.get`."""
    records = self.records(indices)
    labels = [r['label'] for r in records] if self.has_labels else np.zeros(len(records))
    return {'image': to_unit_range(self.images(records, crop_draws)), 'label': np.asarray(labels, np.int32)}


def create_source(data_config, tokenize=True, pixels=False):
  """The source `config.data.source` names. With data.captions, examples also carry their caption:
  as 'tokens' (int32 [max_tokens], text/tokenizers.py), or as the 'caption' string when
  tokenize=False (the encode job stores raw captions). With `pixels` a latent source also returns the
  images stored beside the latents, 'pixels' uint8 of data.pixels' size (REPA's encoder input); a pixel
  source's 'image' already is that."""
  source = _base_source(data_config, pixels)
  if data_config.get('captions', False):
    source = with_captions(source, data_config)
    if tokenize:
      source = TokenizedCaptions(source, data_config)
  return source


def _tfds_base_name(name):
  """'coco_captions/2014:1.1.0' -> 'coco_captions'."""
  return name.split(':')[0].split('/')[0]


def tfds_source(data_config):
  return TfdsSource(data_config.name, data_config.split, data_config.image_size, data_config.get('channels', 3),
                    data_config.get('num_workers', 1), data_config.get('tfds_data_dir', ''))


def _base_source(data_config, pixels=False):
  kind = data_config.source
  if kind == 'digits':
    check_class_count(10, data_config, 'the digits dataset')
    return digits_source(data_config.image_size, data_config.channels)
  if kind == 'image_folder':
    source = ImageFolderSource(data_config.path, data_config.image_size, data_config.channels,
                               data_config.get('num_workers', 1))
    check_class_count(len(source.classes), data_config, f'the image folder {data_config.path!r}')
    return source
  if kind == 'tfds':
    if data_config.get('captions', False) and _tfds_base_name(data_config.name) == 'coco_captions':
      return CocoCaptionsSource(tfds_source(data_config))
    source = tfds_source(data_config)
    check_class_count(source.num_classes, data_config, f'TFDS dataset {data_config.name!r}', source.has_labels)
    return source
  if kind == 'latents':
    size = data_config.pixels.image_size
    source = LatentSource(data_config.path, data_config.image_size, data_config.channels,
                          latent_scale=data_config.get('latent_scale'), captions=data_config.get('captions', False),
                          pixel_shape=(size, size, data_config.pixels.channels) if pixels else None)
    check_class_count(source.num_classes, data_config, f'the latent dataset {data_config.path!r}')
    return source
  raise ValueError(f'config.data.source={kind!r} is not one of digits, image_folder, tfds, latents')

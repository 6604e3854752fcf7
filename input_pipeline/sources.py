"""Random-access data sources: `len(source)` and `source.get(indices) -> {'image', 'label'}`.

Images come out float32 NHWC in [-1, 1] (latents in their stored dtype, usually float16), labels
int32. Random access by index is what lets the loader compute any step's batch from (seed, step)
alone, so resuming needs no iterator state and every host can read its own slice.
"""
import concurrent.futures
import functools
import math
import os

import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif')


def resize_images(images_uint8, size):
  """[N, H, W, C] uint8 -> [N, size, size, C] uint8, ADM-style: box-downscale, then bicubic, centre crop."""
  from PIL import Image
  out = []
  for img in images_uint8:
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out.append(center_crop_resize(pil, size))
  return np.stack(out)


def center_crop_resize(pil_image, size):
  """A PIL image -> uint8 [size, size, C]: halved with a box filter while at least twice the size (ADM), resized
  bicubic so the short side is `size`, then centre-cropped (guided-diffusion's center_crop_arr)."""
  arr = _resize_short_side(pil_image, size)
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return arr[top:top + size, left:left + size]


def random_crop_resize(pil_image, size, draws, min_crop_fraction=0.8):
  """guided-diffusion's random_crop_arr (its classifier training's augmentation) with the randomness passed in:
  `draws`, three numbers in [0, 1), pick the short side uniformly among the integers [size, ceil(size / 0.8)], to
  which the image is resized as in `center_crop_resize`, and the top and left of a size x size crop uniformly among
  the positions that fit. So the crop keeps 80% to 100% of the short side."""
  lo, hi = size, math.ceil(size / min_crop_fraction)
  short = lo + int(draws[0] * (hi - lo + 1))
  arr = _resize_short_side(pil_image, short)
  top, left = int(draws[1] * (arr.shape[0] - size + 1)), int(draws[2] * (arr.shape[1] - size + 1))
  return arr[top:top + size, left:left + size]


def _resize_short_side(pil_image, short):
  """uint8 [H, W, C] with min(H, W) = short: box-halved while at least twice that, then bicubic."""
  from PIL import Image
  while min(pil_image.size) >= 2 * short:
    pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
  scale = short / min(pil_image.size)
  pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC)
  arr = np.asarray(pil_image)
  return arr[..., None] if arr.ndim == 2 else arr


def crop_resize(pil_image, size, draws=None):
  """`random_crop_resize` with the draws of one example, or `center_crop_resize` without."""
  return center_crop_resize(pil_image, size) if draws is None else random_crop_resize(pil_image, size, draws)


def map_threads(fn, items, num_workers):
  """[fn(x) for x in items] on num_workers threads, in order: PIL releases the GIL while it decodes and resizes."""
  if num_workers <= 1 or len(items) <= 1:
    return [fn(x) for x in items]
  return list(_thread_pool(num_workers).map(fn, items))


@functools.lru_cache(maxsize=None)
def _thread_pool(num_workers):
  return concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix='decode')


def to_unit_range(images_uint8):
  return images_uint8.astype(np.float32) / 127.5 - 1.0


class ArraySource:
  """Images and labels held in memory."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels.astype(np.int32)

  def __len__(self):
    return len(self.labels)

  def get(self, indices):
    return {'image': self.images[indices], 'label': self.labels[indices]}


def digits_source(image_size=8, channels=1):
  """scikit-learn's 1,797 8x8 handwritten digits (values 0..16), ships with the package; offline."""
  from sklearn.datasets import load_digits
  if channels not in (1, 3):
    raise ValueError(f'config.data.channels={channels}: the digits dataset has 1 channel (or 3, replicated)')
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  if image_size != 8:
    images = resize_images(images, image_size)
  if channels == 3:
    images = np.repeat(images, 3, axis=-1)
  return ArraySource(to_unit_range(images), digits.target)


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
    self.image_size, self.mode, self.num_workers = image_size, 'L' if channels == 1 else 'RGB', num_workers

  def __len__(self):
    return len(self.files)

  def load_uint8(self, index, crop_draws=None):
    from PIL import Image
    with Image.open(self.files[index]) as img:
      return crop_resize(img.convert(self.mode), self.image_size, crop_draws)

  def get(self, indices, crop_draws=None):
    """crop_draws: [len(indices), 3] in [0, 1) for random crops (`random_crop_resize`); None: centre crops."""
    images = np.stack(map_threads(lambda j: self.load_uint8(indices[j], None if crop_draws is None else crop_draws[j]),
                                  range(len(indices)), self.num_workers))
    return {'image': to_unit_range(images), 'label': self.labels[indices]}


class TfdsSource:
  """A TFDS dataset read by index through `tfds.data_source` (TensorFlow-free, ArrayRecord files)."""

  def __init__(self, name, split, image_size, num_workers=1):
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ImportError(f"config.data.source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets "
                        f"(and tensorflow to prepare {name!r} once)") from e
    try:
      self.data = tfds.data_source(name, split=split)
    except Exception as e:
      raise RuntimeError(f'could not open TFDS dataset {name!r} split {split!r} for random access ({e}). '
                         f'Prepare it once in ArrayRecord format: tfds build {name} --file_format=array_record '
                         '(ImageNet needs its archives in the manual_dir first; see the TFDS catalog)') from e
    self.image_size, self.num_workers = image_size, num_workers
    self.labels = None

  def __len__(self):
    return len(self.data)

  def get(self, indices, crop_draws=None):
    """crop_draws as in `ImageFolderSource.get`."""
    from PIL import Image
    records = [self.data[int(i)] for i in indices]  # read in this thread; the resizing runs on num_workers
    images = np.stack(map_threads(
        lambda j: crop_resize(Image.fromarray(np.asarray(records[j]['image']).squeeze()), self.image_size,
                              None if crop_draws is None else crop_draws[j]), range(len(records)), self.num_workers))
    return {'image': to_unit_range(images), 'label': np.asarray([r['label'] for r in records], np.int32)}


def create_source(data_config, tokenize=True):
  """The source `config.data.source` names. With data.captions, examples also carry their caption:
  as 'tokens' (int32 [max_tokens], input_pipeline/tokenizers.py), or as the 'caption' string when
  tokenize=False (the encode job stores raw captions)."""
  source = _base_source(data_config)
  if data_config.get('captions', False):
    from input_pipeline.captions import TokenizedCaptions, with_captions
    source = with_captions(source, data_config)
    if tokenize:
      source = TokenizedCaptions(source, data_config)
  return source


def _base_source(data_config):
  kind = data_config.source
  if kind == 'digits':
    return digits_source(data_config.image_size, data_config.channels)
  if kind == 'image_folder':
    return ImageFolderSource(data_config.path, data_config.image_size, data_config.channels,
                             data_config.get('num_workers', 1))
  if kind == 'tfds':
    if data_config.get('captions', False) and data_config.name.split(':')[0] == 'coco_captions':
      from input_pipeline.captions import CocoCaptionsSource
      return CocoCaptionsSource(data_config.name, data_config.split, data_config.image_size)
    return TfdsSource(data_config.name, data_config.split, data_config.image_size, data_config.get('num_workers', 1))
  if kind == 'latents':
    from input_pipeline.latents import LatentSource
    return LatentSource(data_config.path, data_config.image_size, data_config.channels,
                        latent_scale=data_config.get('latent_scale'), captions=data_config.get('captions', False))
  raise ValueError(f'config.data.source={kind!r} is not one of digits, image_folder, tfds, latents')

"""Images: decoding, cropping and resizing as the sources read them, and conversion of samples to uint8 and grids."""
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


def decode_image(fileobj, mode, size, crop_draws=None):
  """An encoded image (a path or file object) -> uint8 [size, size, C] in PIL `mode` ('L' or 'RGB'), resized and
  cropped by `crop_resize`."""
  from PIL import Image
  with Image.open(fileobj) as img:
    return crop_resize(img.convert(mode), size, crop_draws)


def image_mode(channels):
  return 'L' if channels == 1 else 'RGB'


def to_uint8(images):
  """[-1, 1] floats -> uint8 [0, 255], channels kept (the evaluators repeat a single channel to RGB)."""
  images = np.asarray(images, np.float32)
  finite = np.isfinite(images)
  if not finite.all():  # as uint8 they would pass for black pixels
    raise FloatingPointError(f'{finite.size - finite.sum()} of {finite.size} sampled values are not finite (NaN or '
                             'inf): the sampler diverged. Check config.sample (sampler, num_steps, eta, '
                             'guidance_scale) and that the checkpoint was trained without non-finite updates')
  return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images, columns=None):
  """[N, H, W, C] uint8 -> one [rows*H, columns*W, 3] uint8 image with 2-pixel gaps."""
  n, h, w, c = images.shape
  if c == 1:
    images = np.repeat(images, 3, axis=-1)
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, columns)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = img
  return grid


def image_files(root):
  """Every image file under root (recursively), sorted."""
  files = sorted(
      os.path.join(d, f) for d, _, names in os.walk(root) for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f'--images={root!r} holds no image files ({", ".join(IMAGE_EXTENSIONS)})')
  return files

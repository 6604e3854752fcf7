"""Pre-encoded VAE latents (data.source='latents'): the random-access source and the decoder back to pixels.

Layout of a latent directory (written by `python main.py --mode=encode`, jobs/encode.py):

    meta.json              format, count (images), latent_shape [h, w, c], dtype, latent_scale, flips,
                           shard_size, num_shards, vae (weights file name and config), pixels (the
                           dataset encoded), captions (bool), classes (class names, if known),
                           pixel_shape [H, W, C] (only when the images are stored too)
    labels_00000.npy       int32 [n]               (n = shard_size, fewer in the last shard)
    captions_00000.json    [n] caption strings     (only with captions)
    pixels_00000.npy       uint8 [n, H, W, C]      (only with pixel_shape: the images as encoded, once each)
    latents_00000.npy      float16/32 [n, V, h, w, c], V = 2 with flips (the image, then its mirror), else 1

Every file is written under a temporary name and renamed; the latents file is written last, so a
shard is complete exactly when its latents file exists (and, with pixel_shape, its pixels file).
`.npy` shards are memory-mapped, so an ImageNet-sized set (1.28M x 2 x 32x32x4 float16, 21 GB) is
read by index without loading it.

Pixels are stored for REPA (docs/repa.md), whose frozen encoder reads the clean image: the encode job
writes them when config.repa.encoder is set (or the directory already has them), and the source returns
them as 'pixels' only when asked, so training without REPA reads the latents alone. A mirror entry's
pixels are the stored image flipped at read time (256 px ImageNet: 196,608 bytes per image, 252 GB).

Stored values are `latent_scale * posterior mean` of the VAE (the mean, not a posterior sample: the
SD-VAE's posterior is narrow, and a stored sample would freeze one draw anyway). The scale is checked
against config.data.latent_scale on load.

Flips: the latent of a mirrored image is not the mirrored latent, so the source does not flip latents
(data.random_flip must stay False); instead the encode job stores the latent of each horizontally
flipped image as a second view, and the source has 2N entries: entry i < N is image i, entry N + i is
image i flipped. The loader's epoch permutation over 2N entries then shows each image in both
orientations once per (doubled) epoch: the dataset is simply doubled. This keeps the source a pure
function of the index and the loader unchanged; the price is that an "epoch" counts 2N examples.
"""
import functools
import json
import os

import numpy as np

FORMAT = 'latent-shards-v1'
META_FILE = 'meta.json'


def shard_path(directory, kind, index):
  ext = 'json' if kind == 'captions' else 'npy'
  return os.path.join(directory, f'{kind}_{index:05d}.{ext}')


def encode_command(path):
  return ('python main.py --mode=encode --config=<the config you train with> --workdir=runs/encode '
          f'--config.data.path={path}  (it encodes config.data.pixels with the VAE at config.data.vae_weights; '
          'for ImageNet see configs/dit.py)')


def read_meta(path):
  """meta.json of a latent directory, or None when there is none."""
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    return None
  with open(meta_path) as f:
    return json.load(f)


def missing_shards(path, meta, kind='latents'):
  return [s for s in range(meta['num_shards']) if not os.path.isfile(shard_path(path, kind, s))]


class LatentSource:
  """Latents by index from a directory written by the encode job; `get` returns the 'image' latents in their
  stored dtype (float16 by default): the train step casts them to float32 on the device, which halves the
  host-to-device bytes and skips numpy's slow float16 conversion, the bulk of the host work per batch.
  With `pixel_shape` (H, W, C) it also returns the stored images, 'pixels' uint8 [B, H, W, C], a mirror
  entry's flipped (REPA's encoder input)."""
  def __init__(self, path, image_size, channels, latent_scale=None, captions=False, pixel_shape=None):
    meta = read_meta(path) if os.path.isdir(path) else None
    if meta is None:
      raise FileNotFoundError(f'config.data.path={path!r} holds no encoded latents ({META_FILE} not found). '
                              f'Encode the image dataset first: {encode_command(path)}')
    if meta.get('format') != FORMAT:
      raise ValueError(f'{path}/{META_FILE} has format {meta.get("format")!r}, expected {FORMAT!r}')
    shape = tuple(meta['latent_shape'])
    if shape != (image_size, image_size, channels):
      raise ValueError(f'latents in {path} have shape {shape}, but config.data.image_size={image_size} and '
                       f'config.data.channels={channels} ask for {(image_size, image_size, channels)}')
    if latent_scale is not None and not np.isclose(meta['latent_scale'], latent_scale, rtol=1e-6, atol=0):
      raise ValueError(f'latents in {path} were scaled by {meta["latent_scale"]}, but config.data.latent_scale='
                       f'{latent_scale}; set --config.data.latent_scale={meta["latent_scale"]} or re-encode')
    missing = missing_shards(path, meta)
    if missing:
      raise FileNotFoundError(f'the encoding in {path} is incomplete: {len(missing)} of {meta["num_shards"]} '
                              f'shards missing (first {missing[0]}); rerun the encode command, which resumes: '
                              f'{encode_command(path)}')
    if captions and not meta.get('captions'):
      raise ValueError(f'config.data.captions=True but the latents in {path} were encoded without captions; '
                       're-encode with --config.data.captions=True')
    if pixel_shape is not None:
      check_pixels(path, meta, tuple(pixel_shape))
    self.path, self.meta, self.with_captions, self.with_pixels = path, meta, captions, pixel_shape is not None
    self.count, self.shard_size = meta['count'], meta['shard_size']
    self.views = 2 if meta['flips'] else 1
    self.labels = np.concatenate([np.load(shard_path(path, 'labels', s)) for s in range(meta['num_shards'])])
    if len(self.labels) != self.count:
      raise ValueError(f'{path}: the label shards hold {len(self.labels)} labels, meta.json says {self.count}')
    self.classes = meta.get('classes')
    top = int(self.labels.max()) if len(self.labels) else -1
    self.num_classes = len(self.classes) if self.classes else (top + 1 if top >= 0 else None)

  def __len__(self):
    return self.count * self.views

  @functools.lru_cache(maxsize=None)
  def _latents(self, shard):
    array = np.load(shard_path(self.path, 'latents', shard), mmap_mode='r')
    rows = min(self.shard_size, self.count - shard * self.shard_size)
    expected = (rows, self.views) + tuple(self.meta['latent_shape'])
    if array.shape != expected:
      raise ValueError(f'{shard_path(self.path, "latents", shard)} has shape {array.shape}, expected {expected}')
    return array

  @functools.lru_cache(maxsize=None)
  def _pixels(self, shard):
    return np.load(shard_path(self.path, 'pixels', shard), mmap_mode='r')

  @functools.lru_cache(maxsize=64)
  def _captions(self, shard):
    with open(shard_path(self.path, 'captions', shard), encoding='utf-8') as f:
      return json.load(f)

  def get(self, indices):
    indices = np.asarray(indices, np.int64)
    image, view = indices % self.count, indices // self.count
    shard, within = np.divmod(image, self.shard_size)
    out = np.empty((len(indices),) + tuple(self.meta['latent_shape']), self._latents(0).dtype)
    for s in np.unique(shard):
      sel = shard == s
      out[sel] = self._latents(int(s))[within[sel], view[sel]]
    batch = {'image': out, 'label': self.labels[image]}
    if self.with_pixels:
      batch['pixels'] = np.empty((len(indices),) + tuple(self.meta['pixel_shape']), np.uint8)
      for s in np.unique(shard):
        sel = shard == s
        pixels = self._pixels(int(s))[within[sel]]
        batch['pixels'][sel] = np.where(view[sel, None, None, None] == 1, pixels[:, :, ::-1], pixels)
    if self.with_captions:
      batch['caption'] = np.asarray([self._captions(int(s))[int(j)] for s, j in zip(shard, within)])
    return batch


def check_pixels(path, meta, pixel_shape):
  """The latent directory `path` holds every shard's images, of `pixel_shape`; else an error that says how to add
  them."""
  add = ('add them with the encode command, which keeps the latents and writes the images of config.data.pixels '
         f'beside them: python main.py --mode=encode --config=<the REPA config you train with> --workdir=runs/encode '
         f'--config.data.path={path}')
  if not meta.get('pixel_shape'):
    raise ValueError(f'config.repa.encoder reads the clean images, but config.data.path={path} holds latents only '
                     f'(encoded without REPA); {add}')
  if tuple(meta['pixel_shape']) != pixel_shape:
    raise ValueError(f'the images stored beside the latents in {path} are {meta["pixel_shape"]} (H, W, C) but '
                     f'config.data.pixels asks for {list(pixel_shape)}: set config.data.pixels.image_size and '
                     'channels to the encoded dataset\'s')
  missing = missing_shards(path, meta, 'pixels')
  if missing:
    raise FileNotFoundError(f'{len(missing)} of {meta["num_shards"]} shards in {path} lack their images (first '
                            f'{missing[0]}): the encode run that adds them was interrupted; {add}')

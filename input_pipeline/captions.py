"""Caption datasets: sources whose examples carry a 'caption' string, and the wrapper that tokenizes it.

With config.data.captions=True, `create_source` returns batches with 'tokens' (int32 [B, max_tokens])
next to 'image' and 'label'; raw strings never reach the devices.

- digits: template captions from the label, "a handwritten digit seven", "the number 7, written by
  hand", ... Each image always gets the same template (a fixed pseudo-random choice per index, so the
  template is independent of the label; the digits are stored in label order 0..9, 0..9, ...).
- image folder: `<class>/<stem>.txt` beside each `<class>/<stem>.png|jpg|...` (first line used).
- TFDS coco_captions (data.source='tfds', data.name='coco_captions'): each image with each of its first
  5 captions is one example, so the dataset has 5x as many entries as images (random access by index
  stays exact).
- latents: the captions the encode job stored beside the latents (see input_pipeline/latents.py).
"""
import os

import numpy as np

from input_pipeline.images import to_unit_range
from text.digit_captions import DIGIT_TEMPLATES, digit_caption
from text.tokenizers import tokenizer_for

COCO_CAPTIONS_PER_IMAGE = 5


class DigitCaptionSource:
  """Adds template captions to a digits source."""
  def __init__(self, source, seed=0):
    self.source = source
    self.templates = np.random.default_rng(seed).integers(len(DIGIT_TEMPLATES), size=len(source))

  def __len__(self):
    return len(self.source)

  def get(self, indices):
    batch = self.source.get(indices)
    batch['caption'] = np.asarray(
        [digit_caption(int(y), int(self.templates[i])) for y, i in zip(batch['label'], indices)])
    return batch


class FolderCaptionSource:
  """Adds the caption in `<image stem>.txt` next to each image of an ImageFolderSource."""
  def __init__(self, source):
    self.source = source
    missing = [f for f in source.files if not os.path.isfile(os.path.splitext(f)[0] + '.txt')]
    if missing:
      raise FileNotFoundError(f'config.data.captions=True but {len(missing)} of {len(source.files)} images have no '
                              f'caption file beside them, e.g. {os.path.splitext(missing[0])[0]}.txt (one caption '
                              'per image, same name as the image with .txt)')

  def __len__(self):
    return len(self.source)

  def get(self, indices):
    batch = self.source.get(indices)
    captions = []
    for i in indices:
      with open(os.path.splitext(self.source.files[i])[0] + '.txt', encoding='utf-8') as f:
        captions.append(f.readline().strip())
    batch['caption'] = np.asarray(captions)
    return batch


class CocoCaptionsSource:
  """TFDS coco_captions by index: example i is image i // 5 with its caption i % 5 (labels are 0)."""
  def __init__(self, images):
    self.images = images  # a sources.TfdsSource of coco_captions

  def __len__(self):
    return COCO_CAPTIONS_PER_IMAGE * len(self.images)

  def get(self, indices):
    image_indices, caption_indices = np.divmod(np.asarray(indices, np.int64), COCO_CAPTIONS_PER_IMAGE)
    records = self.images.records(image_indices)
    captions = [r['captions']['text'][c] for r, c in zip(records, caption_indices)]
    return {
        'image': to_unit_range(self.images.images(records)), 'label': np.zeros(len(records), np.int32),
        'caption': np.asarray([t.decode('utf-8') if isinstance(t, bytes) else str(t) for t in captions])
    }


class TokenizedCaptions:
  """Replaces each batch's 'caption' strings by 'tokens' int32 [B, max_tokens]."""
  def __init__(self, source, data_config):
    self.source, self.max_tokens = source, data_config.get('max_tokens', 77)
    self.tokenizer = tokenizer_for(data_config)

  def __len__(self):
    return len(self.source)

  def get(self, indices):
    batch = self.source.get(indices)
    batch['tokens'] = self.tokenizer.tokenize(list(batch.pop('caption')), self.max_tokens)
    return batch


def with_captions(source, data_config):
  """`source` with a 'caption' per example, for config.data.source (sources that carry their own pass through)."""
  kind = data_config.source
  if kind == 'digits':
    return DigitCaptionSource(source)
  if kind == 'image_folder':
    return FolderCaptionSource(source)
  if kind == 'latents' or isinstance(source, CocoCaptionsSource):
    return source  # they carry their captions already
  if kind == 'tfds':
    raise ValueError(f"config.data.captions=True with TFDS needs data.name='coco_captions' (got "
                     f'{data_config.name!r})')
  raise ValueError(f'config.data.captions=True is not supported for data.source={kind!r}')

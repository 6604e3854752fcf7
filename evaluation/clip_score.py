"""CLIP score, the torchmetrics convention: max(mean over pairs of 100 * cos(image emb, text emb), 0).

torchmetrics (`torchmetrics.multimodal.CLIPScore`, default model openai/clip-vit-large-patch14) computes
100 * cosine per pair, averages, and clips the *average* at 0 (not each pair, as its docstring formula
suggests; Hessel et al.'s CLIP-S clips each pair and weights by 2.5). `clip_score_per_pair` gives the
unclipped per-pair scores so either convention can be had.

Image preprocessing follows Hugging Face `CLIPImageProcessor` (its PIL backend, exactly): uint8 RGB ->
resize so the shorter side is 224 with PIL bicubic (longer side int(224 * long / short)), round back to uint8
as PIL does, center crop 224 with the top-left corner at ((h - 224) // 2, (w - 224) // 2), scale by 1/255,
normalize with the OpenAI CLIP mean and std (tested equal to CLIPImageProcessorPil, max difference 0).
PIL on the host is kept for that exactness: `jax.image.resize(x, shape, 'bicubic', antialias=True)` uses the
same Keys kernel (a = -0.5) with the same antialiasing, but PIL resamples in fixed point, so even rounded to
uint8 the two differ by up to 1 level (mean 0.14-0.21 levels measured on three size pairs), and jax does
not round. HF's torchvision backend (antialiased bicubic on uint8; the default `CLIPImageProcessor` in
transformers 5) should be within about a level of PIL too (not measured: no CPU torchvision here).
OpenAI's own `clip.load` preprocess rounds the crop offset instead of flooring it (one pixel apart for odd
margins).

Text: CLIP BPE, 77 tokens with start/end; captions longer than 75 tokens are truncated keeping the end
token (open_clip). torchmetrics instead cuts the ids at 77 and so loses the end token for such captions.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from evaluation import device_batches
from models.clip import CLIPModel, l2_normalize
from models.clip_convert import load_converted
from text.clip_bpe import CLIPTokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# --- closed-form score -------------------------------------------------------------------------------------


def clip_score_per_pair(image_embeds, text_embeds):
  """100 * cosine similarity of row i of each [N, D] array, unclipped, float64 [N]."""
  a, b = np.asarray(image_embeds, np.float64), np.asarray(text_embeds, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f'need two [N, D] arrays of one shape, got {a.shape} and {b.shape}')
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  return 100 * (a * b).sum(-1)


def aggregate_clip_score(per_pair_scores):
  """torchmetrics' reduction: the mean of the per-pair scores, clipped at 0."""
  scores = np.asarray(per_pair_scores, np.float64)
  if scores.size == 0:
    raise ValueError('no scores to average')
  return float(max(scores.mean(), 0.0))


def clip_score_from_embeddings(image_embeds, text_embeds):
  return aggregate_clip_score(clip_score_per_pair(image_embeds, text_embeds))


# --- image preprocessing (host, PIL) ----------------------------------------------------------------------


def to_uint8_image(image):
  """HWC RGB uint8 from uint8, or from float in [0, 1] (rounded); grayscale and RGBA are converted."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    if not np.issubdtype(image.dtype, np.floating):
      raise TypeError(f'images must be uint8 or float in [0, 1], got {image.dtype}')
    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'expected an HWC image with 1, 3 or 4 channels, got shape {image.shape}')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image[..., :3]


def resized_shape(height, width, shortest_side):
  """(h, w) with the shorter side = `shortest_side`, the longer int(shortest_side * long / short) (as HF)."""
  if width <= height:
    return int(shortest_side * height / width), shortest_side
  return shortest_side, int(shortest_side * width / height)


def center_crop(image, size):
  height, width = image.shape[:2]
  if height < size or width < size:
    raise ValueError(f'image {image.shape} is smaller than the crop {size}')
  top, left = (height - size) // 2, (width - size) // 2
  return image[top:top + size, left:left + size]


def preprocess_image(image, image_size=224):
  """One HWC image -> float32 [image_size, image_size, 3], CLIP-normalized."""
  image = to_uint8_image(image)
  height, width = resized_shape(*image.shape[:2], image_size)
  resized = np.asarray(Image.fromarray(image).resize((width, height), resample=Image.BICUBIC))
  pixels = center_crop(resized, image_size).astype(np.float32) / 255.0
  return (pixels - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)


def preprocess_images(images, image_size=224):
  """A batch (array [N, H, W, C] or list of HWC images of any sizes) -> float32 [N, S, S, 3]."""
  return np.stack([preprocess_image(image, image_size) for image in images])


class PreprocessedImages:
  """`preprocess_images` of images, made one slice at a time as `device_batches.map_batches` reads them: all of a
  30k-sample evaluation at once would be 18 GB of float32 pixels."""
  def __init__(self, images, image_size):
    self.images, self.image_size = images, image_size

  def __len__(self):
    return len(self.images)

  def __getitem__(self, rows):
    return preprocess_images(self.images[rows], self.image_size)


# --- embeddings, jitted once per (model, batch shape) ----------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def image_embeddings(model, params, pixel_values):
  """L2-normalized float32 image embeddings of preprocessed NHWC pixels."""
  return l2_normalize(model.apply({'params': params}, pixel_values, method=CLIPModel.get_image_features))


@functools.partial(jax.jit, static_argnums=0)
def text_embeddings(model, params, input_ids):
  """L2-normalized float32 text embeddings of token ids [N, 77]."""
  return l2_normalize(model.apply({'params': params}, input_ids, method=CLIPModel.get_text_features))


class CLIPScorer:
  """CLIP model + params + tokenizer; every batch is padded to `batch_size` (rounded up to a multiple of the local
  device count) and split over this host's devices, so each tower compiles once."""
  def __init__(self, config, params, tokenizer, batch_size=64, dtype=jnp.float32):
    self.model = CLIPModel(config, dtype)
    self.mesh = device_batches.local_mesh()
    self.params = device_batches.replicate(params, self.mesh)
    self.tokenizer = tokenizer
    self.batch_size = batch_size

  @classmethod
  def from_files(cls, weights_path, vocab_path, batch_size=64, dtype=jnp.float32):
    """From a `.msgpack` written by models.clip_convert and a `bpe_simple_vocab_16e6.txt.gz`."""
    config, params = load_converted(weights_path)
    return cls(config, params, CLIPTokenizer.from_file(vocab_path), batch_size, dtype)

  @property
  def image_size(self):
    return self.model.config.vision.image_size

  def embed_pixels(self, pixel_values):
    """Normalized embeddings [N, D] of preprocessed float32 [N, S, S, 3] pixels."""
    return self._map(image_embeddings, np.asarray(pixel_values, np.float32))

  def _map(self, embed, array):
    return device_batches.map_batches(functools.partial(embed, self.model, self.params), array, self.batch_size,
                                      self.mesh)

  def embed_images(self, images):
    return self._map(image_embeddings, PreprocessedImages(images, self.image_size))

  def embed_token_ids(self, input_ids):
    return self._map(text_embeddings, np.asarray(input_ids, np.int32))

  def embed_texts(self, texts):
    return self.embed_token_ids(self.tokenizer.tokenize(texts, self.model.config.text.max_length))

  def per_pair(self, images, texts):
    """Unclipped 100 * cos per (image, caption) pair, float64 [N]."""
    if len(images) != len(texts):
      raise ValueError(f'{len(images)} images but {len(texts)} captions')
    return clip_score_per_pair(self.embed_images(images), self.embed_texts(texts))

  def __call__(self, images, texts):
    """The CLIP score of the pairs, torchmetrics convention."""
    return aggregate_clip_score(self.per_pair(images, texts))


# --- the config.evals evaluator ----------------------------------------------------------------------------


def prompts_from_cond(cond, num_images):
  """The captions in cond['prompts'] as a list of str (bytes are decoded as UTF-8), one per image."""
  if 'prompts' not in cond:
    raise ValueError("evaluator 'clip_score' needs the caption of every sample in cond['prompts'] (a numpy str "
                     f"array); the conditions hold only {sorted(cond)}")
  prompts = [p.decode('utf-8') if isinstance(p, bytes) else str(p) for p in np.asarray(cond['prompts']).tolist()]
  if len(prompts) != num_images:
    raise ValueError(f"cond['prompts'] holds {len(prompts)} captions for {num_images} images")
  return prompts


class CLIPScoreEvaluator:
  """`config.evals.clip_score`: the CLIP score (torchmetrics convention) of text-conditional samples.

  Contract with text-conditional sampling: the conditions passed with the images hold `cond['prompts']`, a
  numpy str array [N] whose i-th entry is the caption sample i was generated from (an npz of samples stores
  it as `prompts` beside `arr_0`). The captions are tokenized with this evaluator's own CLIP tokenizer, so it
  does not matter how the diffusion model's text encoder tokenized them.

  eval_config: clip_weights (a .msgpack from `python -m models.clip_convert`, e.g. of
  openai/clip-vit-large-patch14), vocab (bpe_simple_vocab_16e6.txt.gz), optional batch_size (64).
  Both files are read when the evaluator is built, so a missing one fails at the start of a run.
  """
  def __init__(self, config, eval_config):
    del config
    for field in ('clip_weights', 'vocab'):
      if not eval_config.get(field):
        raise ValueError(f'config.evals.clip_score.{field} is not set')
    self.scorer = CLIPScorer.from_files(eval_config.clip_weights, eval_config.vocab,
                                        batch_size=eval_config.get('batch_size', 64))
    vocab_size, table_size = self.scorer.tokenizer.vocab_size, self.scorer.model.config.text.vocab_size
    if vocab_size > table_size:
      raise ValueError(f'{eval_config.vocab} has {vocab_size} tokens but {eval_config.clip_weights} embeds only '
                       f'{table_size}: the vocabulary and the CLIP weights do not belong together')

  def __call__(self, images_uint8, cond):
    prompts = prompts_from_cond(cond, len(images_uint8))
    per_pair = self.scorer.per_pair(images_uint8, prompts)
    return {'clip_score': aggregate_clip_score(per_pair), 'clip_score_per_pair_std': float(np.std(per_pair))}

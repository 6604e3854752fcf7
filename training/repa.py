"""REPA (Yu et al. 2025, "Representation Alignment for Generation"): the token states after an early DiT block,
through the DiT's projector (models/dit.RepaProjector), are pulled towards the patch tokens of a frozen pretrained
encoder of the clean image.

The loss of an example is the negative cosine similarity between each projected token and the encoder's token at the
same place, averaged over the tokens; the batch loss is its mean over the examples (REPA's loss.py, `proj_loss`, with
torch's `F.normalize`, eps 1e-12). The train step adds config.repa.weight times it to the diffusion loss while the
step is below config.repa.stop_step. The encoder runs inside the step on the batch's images (`encoder_images`); its
params are a frozen input of the step (no gradient, not in the train state or its checkpoints). docs/repa.md has the
whole picture.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from models.dinov2 import dinov2_inputs


class RepaEncoder(NamedTuple):
  """A frozen encoder: tokens(params, images) -> [B, N, C] for images NHWC in [-1, 1]."""
  tokens: Callable
  params: Any


def _normalize(x, eps=1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def repa_loss_per_example(projected, target):
  """[B]: minus the cosine similarity of projected [B, N, C] and target [B, N, C] tokens, averaged over N."""
  return -(_normalize(projected.astype(jnp.float32)) * _normalize(target.astype(jnp.float32))).sum(-1).mean(-1)


def repa_weight(step, weight, stop_step):
  """The weight of the REPA loss at `step` (traced): `weight` below stop_step, then 0; stop_step 0: always."""
  if not stop_step:
    return jnp.float32(weight)
  return jnp.where(step < stop_step, weight, 0.0).astype(jnp.float32)


def encoder_images(batch):
  """The images REPA's encoder reads from a batch, float32 NHWC in [-1, 1]: the uint8 'pixels' stored beside a latent
  dataset's latents (mapped as the pixel sources map uint8), else the pixel dataset's 'image'."""
  if 'pixels' in batch:
    return batch['pixels'].astype(jnp.float32) / 127.5 - 1.0
  return batch['image'].astype(jnp.float32)


def repa_inputs(encoder_tokens, encoder_params, pixels, step, repa_config):
  """What REPA adds to the loss inputs of a batch: 'repa_target', the encoder's tokens of `pixels` (no gradient), and
  'repa_weight' [B], the weight at `step` for each example (split with the batch into microbatches)."""
  tokens = jax.lax.stop_gradient(encoder_tokens(encoder_params, pixels.astype(jnp.float32)))
  weight = repa_weight(step, repa_config.weight, repa_config.stop_step)
  return {'repa_target': tokens, 'repa_weight': jnp.full(pixels.shape[:1], weight)}


def classifier_tokens_fn(classifier):
  """tokens(params, images) of an ADM noisy classifier (models/adm_classifier.py) read at t = 0: its spatial features
  before the pooling head, [B, H' * W', C]."""
  def tokens(params, images):
    _, state = classifier.apply({'params': params}, images, jnp.zeros(images.shape[:1], jnp.int32),
                                mutable=['intermediates'])
    features = state['intermediates']['features'][0]
    return features.reshape(features.shape[0], -1, features.shape[-1])

  return tokens


def dinov2_tokens_fn(dinov2, resolution):
  """tokens(params, images) of a DINOv2 (models/dinov2.py): its normalised patch tokens of the images resized to
  `resolution` as REPA's `preprocess_raw_image` does."""
  def tokens(params, images):
    return dinov2.apply({'params': params}, dinov2_inputs(images, resolution))['patch_tokens']

  return tokens

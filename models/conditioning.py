"""What a model is conditioned on, as a dict of batch-first arrays passed as keyword arguments.

Class-conditional models take {'y': labels}, with index num_classes as the null label that
classifier-free guidance and label dropout use. An unconditional model takes {}.

Text-conditional models (config.text.encoder, models/text_encoder.py) take {'tokens': int32 [B, L]}
(L = config.data.max_tokens, 77 as in CLIP), plus 'y' when config.text.use_labels. Their null
condition is the empty prompt's tokens (start, end, pad...), which the caller passes in (the tokenizer lives in
text/), and label dropout replaces the prompt (and the label, if any) by it. The conditions of evaluation and
grids, prompts and low-resolution inputs are made from the config in jobs/conditions.py.

Super-resolution models (config.model.low_res_size > 0, ADM's SuperResModel) also take {'low_res': [B, s, s, C]},
the image area-downsampled to s pixels in [-1, 1]; guidance's null condition keeps it (only the label or prompt
is dropped). For grids and evaluation it comes from config.sample.low_res_samples (a base model's samples.npz) or
else from the first images of the dataset (jobs/conditions.py).
"""
import jax
import jax.numpy as jnp

MODEL_INPUTS = ('y', 'tokens', 'low_res')
CLASSIFIERS = ('adm_classifier',)  # models that predict the label of a noised image instead of denoising it


def is_classifier(config):
  return config.model.name in CLASSIFIERS


def uses_text(config):
  text = config.get('text')
  return bool(text is not None and text.get('encoder', ''))


def low_res_size(config):
  """The side of the low-resolution image a super-resolution model takes, or 0."""
  return config.model.get('low_res_size', 0)


def area_downsample(images, size):
  """[B, H, W, C] -> [B, size, size, C], each output pixel the mean of its (H / size)^2 input pixels (torch's
  F.interpolate(mode='area'), with which guided-diffusion's super_res_train.py makes its low-resolution inputs)."""
  b, h, w, c = images.shape
  f = h // size
  return images.reshape(b, size, f, size, f, c).mean(axis=(2, 4))


def uses_labels(config):
  """Whether the model itself takes class labels 'y' (a classifier predicts them instead)."""
  return (config.data.num_classes > 0 and not is_classifier(config) and
          (not uses_text(config) or config.text.use_labels))


def model_num_classes(config):
  """num_classes of the network: the dataset's (labels in, or a classifier's logits out), or 0 for a text model
  that does not take labels."""
  return config.data.num_classes if uses_labels(config) or is_classifier(config) else 0


def condition_from_batch(batch, config):
  cond = {}
  if uses_labels(config):
    cond['y'] = batch['label']
  if uses_text(config):
    cond['tokens'] = batch['tokens']
  if low_res_size(config):
    cond['low_res'] = area_downsample(batch['image'].astype(jnp.float32), low_res_size(config))
  return cond


def null_condition(cond, num_classes, null_tokens=None):
  """The 'no condition' input of the same shapes (guidance's unconditional branch): the null label num_classes,
  and `null_tokens` (int32 [L], the empty prompt's tokens: text.tokenizers.empty_prompt_tokens) for a prompt."""
  null = {}
  if 'y' in cond:
    null['y'] = jnp.full_like(cond['y'], num_classes)
  if 'tokens' in cond:
    if null_tokens is None:
      raise ValueError('a text-conditional model needs the empty prompt\'s tokens as its null condition')
    null['tokens'] = jnp.broadcast_to(jnp.asarray(null_tokens), cond['tokens'].shape)
  if 'low_res' in cond:
    null['low_res'] = cond['low_res']
  return null


def drop_condition(rng, cond, rate, null):
  """Replaces each example's condition by the null one (`null_condition`) with probability `rate` (for guidance)."""
  if not cond or rate == 0:
    return cond
  batch_size = jax.tree.leaves(cond)[0].shape[0]
  drop = jax.random.bernoulli(rng, rate, (batch_size,))
  return jax.tree.map(lambda c, n: jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), n, c), cond, null)


def dummy_condition(config, batch_size=1):
  cond = {}
  if uses_labels(config):
    cond['y'] = jnp.zeros((batch_size,), jnp.int32)
  if uses_text(config):
    cond['tokens'] = jnp.zeros((batch_size, config.data.max_tokens), jnp.int32)  # shapes only: initialisation
  if low_res_size(config):
    cond['low_res'] = jnp.zeros((batch_size, low_res_size(config), low_res_size(config), config.data.channels))
  return cond

"""What a model is conditioned on, as a dict of batch-first arrays passed as keyword arguments.

Class-conditional models take {'y': labels}, with index num_classes as the null label that
classifier-free guidance and label dropout use. An unconditional model takes {}.

Text-conditional models (config.text.encoder, models/text_encoder.py) take {'tokens': int32 [B, L]}
(L = config.data.max_tokens, 77 as in CLIP), plus 'y' when config.text.use_labels. Their null
condition is the empty prompt's tokens (start, end, pad...), and label dropout replaces the prompt
(and the label, if any) by it. Conditions made for evaluation (`default_conditions`) may carry more
than the model takes: 'prompts' (a numpy str array) and 'y' (the class a prompt names) for the
evaluators; `model_condition` keeps only the model's inputs.

Super-resolution models (config.model.low_res_size > 0, ADM's SuperResModel) also take {'low_res': [B, s, s, C]},
the image area-downsampled to s pixels in [-1, 1]; guidance's null condition keeps it (only the label or prompt
is dropped). For grids and evaluation it comes from config.sample.low_res_samples (a base model's samples.npz) or
else from the first images of the dataset (`low_res_conditions`).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

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
          (not uses_text(config) or config.text.get('use_labels', False)))


def model_num_classes(config):
  """num_classes of the network: the dataset's (labels in, or a classifier's logits out), or 0 for a text model
  that does not take labels."""
  return config.data.num_classes if uses_labels(config) or is_classifier(config) else 0


def _tokens(texts, config):
  from input_pipeline.tokenizers import tokenize
  return tokenize(texts, config.data)


def empty_prompt_tokens(config):
  """int32 [L]: the tokens of the empty prompt, the null condition of text models."""
  return _tokens([''], config)[0]


def condition_from_batch(batch, config):
  cond = {}
  if uses_labels(config):
    cond['y'] = batch['label']
  if uses_text(config):
    cond['tokens'] = batch['tokens']
  if low_res_size(config):
    cond['low_res'] = area_downsample(batch['image'].astype(jnp.float32), low_res_size(config))
  return cond


def model_condition(cond, config):
  """The entries of `cond` the model takes (prompt strings are tokenized if no 'tokens' are given)."""
  out = {}
  if uses_labels(config):
    out['y'] = cond['y']
  if uses_text(config):
    out['tokens'] = cond['tokens'] if 'tokens' in cond else _tokens(list(cond['prompts']), config)
  if low_res_size(config):
    out['low_res'] = cond['low_res']
  return out


def null_condition(cond, config):
  """The 'no condition' input of the same shapes (guidance's unconditional branch)."""
  null = {}
  if 'y' in cond:
    null['y'] = jnp.full_like(cond['y'], config.data.num_classes)
  if 'tokens' in cond:
    null['tokens'] = jnp.broadcast_to(jnp.asarray(empty_prompt_tokens(config)), cond['tokens'].shape)
  if 'low_res' in cond:
    null['low_res'] = cond['low_res']
  return null


def drop_condition(rng, cond, rate, config):
  """Replaces each example's condition by the null one with probability `rate` (for guidance)."""
  if not cond or rate == 0:
    return cond
  null = null_condition(cond, config)
  batch_size = jax.tree.leaves(cond)[0].shape[0]
  drop = jax.random.bernoulli(rng, rate, (batch_size,))
  return jax.tree.map(lambda c, n: jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), n, c), cond, null)


def dummy_condition(config, batch_size=1):
  cond = {}
  if uses_labels(config):
    cond['y'] = jnp.zeros((batch_size,), jnp.int32)
  if uses_text(config):
    cond['tokens'] = jnp.broadcast_to(jnp.asarray(empty_prompt_tokens(config)),
                                      (batch_size, config.data.max_tokens))
  if low_res_size(config):
    cond['low_res'] = jnp.zeros((batch_size, low_res_size(config), low_res_size(config), config.data.channels))
  return cond


def class_prompt(label, config):
  """config.text.prompt_template filled with the class name (config.text.class_names; the digit names
  for data.source='digits'; else the label number)."""
  names = tuple(config.text.get('class_names', ()))
  if not names and config.data.source == 'digits':
    from input_pipeline.captions import DIGIT_NAMES
    names = DIGIT_NAMES
  name = names[label] if names else str(label)
  return config.text.get('prompt_template', '{}').format(name)


def low_res_conditions(num_samples, config):
  """A super-resolution model's conditions: {'low_res': float32 [N, s, s, C] in [-1, 1]} and the labels 'y' of
  those images when the model takes labels. From config.sample.low_res_samples, an .npz of a base model's samples
  (arr_0 uint8 [N, s, s, C], arr_1 labels: what --mode=sample writes; guided-diffusion's super_res_sample.py reads
  the same), or else from the dataset's first images (cycled), area-downsampled."""
  size, channels = low_res_size(config), config.data.channels
  path = config.sample.get('low_res_samples', '')
  if not path:
    from input_pipeline.sources import create_source
    source = create_source(config.data)
    batch = source.get(np.arange(num_samples) % len(source))
    cond = {'low_res': np.asarray(area_downsample(np.asarray(batch['image'], np.float32), size))}
    return cond | ({'y': batch['label']} if uses_labels(config) else {})
  where = f'config.sample.low_res_samples={path!r}'
  if not os.path.isfile(path):
    raise ValueError(f'{where}: no such file; give the samples.npz of a {size}x{size} base model')
  with np.load(path) as f:
    if 'arr_0' not in f or f['arr_0'].dtype != np.uint8 or f['arr_0'].shape[1:] != (size, size, channels):
      found = f"arr_0 {f['arr_0'].dtype} {f['arr_0'].shape}" if 'arr_0' in f else f'arrays {sorted(f)}'
      raise ValueError(f'{where} holds {found}; this super-resolution model upsamples uint8 images [N, {size}, '
                       f'{size}, {channels}] (config.model.low_res_size={size}, config.data.channels={channels})')
    if len(f['arr_0']) < num_samples:
      raise ValueError(f"{where} holds {len(f['arr_0'])} images, fewer than the {num_samples} to upsample: set "
                       f"--config.sample.num_samples={len(f['arr_0'])}")
    if uses_labels(config) and 'arr_1' not in f:
      raise ValueError(f'{where} has no labels (arr_1), which this class-conditional model needs')
    cond = {'low_res': f['arr_0'][:num_samples].astype(np.float32) / 127.5 - 1.0}
    return cond | ({'y': f['arr_1'][:num_samples].astype(np.int32)} if uses_labels(config) else {})


def default_conditions(num_samples, config):
  """Conditions for evaluation and grids: every class equally often (0, 1, ..., C-1, 0, ...).

  Text models: config.text.eval_prompts cycled, or else the class prompts ("a handwritten digit
  seven") with the class in 'y'; the strings are in 'prompts'. Super-resolution models: `low_res_conditions`.
  """
  if low_res_size(config):
    return low_res_conditions(num_samples, config)
  cond = {}
  if config.data.num_classes > 0:
    labels = (np.arange(num_samples) % config.data.num_classes).astype(np.int32)
  if uses_text(config):
    prompts = tuple(config.text.get('eval_prompts', ()))
    if prompts:
      prompts = [prompts[i % len(prompts)] for i in range(num_samples)]
    else:
      if config.data.num_classes == 0:
        raise ValueError('a text model without classes needs config.text.eval_prompts for sample grids and '
                         'evaluation')
      prompts = [class_prompt(int(y), config) for y in labels]
      cond['y'] = labels
    cond['tokens'] = _tokens(prompts, config)
    cond['prompts'] = np.asarray(prompts)
  if uses_labels(config):
    cond['y'] = labels
  return cond

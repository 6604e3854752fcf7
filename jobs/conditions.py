"""Config -> the conditions of sampling: what grids, evaluators, sweeps and `--mode=sample` condition on.

`default_conditions` gives every class equally often (text models: the class prompts, or config.text.eval_prompts;
super-resolution models: low-resolution inputs); `model_condition` keeps what the model takes, tokenizing prompts;
`null_condition_for` is guidance's unconditional input. The model-side pieces (what a model takes, the null label,
label dropout) are in models/conditioning.py.
"""
import os

import numpy as np

from input_pipeline import create_source
from models.conditioning import area_downsample, low_res_size, null_condition, uses_labels, uses_text
from text.digit_captions import DIGIT_NAMES
from text.tokenizers import empty_prompt_tokens, tokenize


def null_tokens(config):
  """int32 [L]: the empty prompt's tokens, the null condition of a text model; None for other models."""
  return empty_prompt_tokens(config.data) if uses_text(config) else None


def null_condition_for(cond, config):
  """The null condition (guidance's unconditional branch) of `cond` for this config's model."""
  return null_condition(cond, config.data.num_classes, null_tokens(config))


def model_condition(cond, config):
  """The entries of `cond` the model takes (prompt strings are tokenized if no 'tokens' are given)."""
  out = {}
  if uses_labels(config):
    out['y'] = cond['y']
  if uses_text(config):
    out['tokens'] = cond['tokens'] if 'tokens' in cond else tokenize(list(cond['prompts']), config.data)
  if low_res_size(config):
    out['low_res'] = cond['low_res']
  return out


def class_prompt(label, config):
  """config.text.prompt_template filled with the class name (config.text.class_names; the digit names
  for data.source='digits'; else the label number)."""
  names = tuple(config.text.class_names)
  if not names and config.data.source == 'digits':
    names = DIGIT_NAMES
  name = names[label] if names else str(label)
  return config.text.prompt_template.format(name)


def low_res_conditions(num_samples, config):
  """A super-resolution model's conditions: {'low_res': float32 [N, s, s, C] in [-1, 1]} and the labels 'y' of
  those images when the model takes labels. From config.sample.low_res_samples, an .npz of a base model's samples
  (arr_0 uint8 [N, s, s, C], arr_1 labels: what --mode=sample writes; guided-diffusion's super_res_sample.py reads
  the same), or else from the dataset's first images (cycled), area-downsampled."""
  size, channels = low_res_size(config), config.data.channels
  path = config.sample.low_res_samples
  if not path:
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
    prompts = tuple(config.text.eval_prompts)
    if prompts:
      prompts = [prompts[i % len(prompts)] for i in range(num_samples)]
    else:
      if config.data.num_classes == 0:
        raise ValueError('a text model without classes needs config.text.eval_prompts for sample grids and '
                         'evaluation')
      prompts = [class_prompt(int(y), config) for y in labels]
      cond['y'] = labels
    cond['tokens'] = tokenize(prompts, config.data)
    cond['prompts'] = np.asarray(prompts)
  if uses_labels(config):
    cond['y'] = labels
  return cond

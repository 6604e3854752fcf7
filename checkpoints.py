"""Orbax checkpoints in <workdir>/checkpoints: save, find the newest restorable one, refuse a mismatch.

Each checkpoint holds the whole TrainState (params, EMA, optimizer state, step, RNG key, skipped
update counters) and a JSON record of the model signature. The input pipeline needs no state of
its own: its batches are a function of (seed, step). Orbax writes into a temporary directory and
renames it when complete, so a process killed mid-save leaves the previous checkpoint intact.
"""
import errno
import json
import logging
import os

import jax
import orbax.checkpoint as ocp


def model_signature(config):
  """What must match between a checkpoint and the config that restores it."""
  signature = {'model': config.model.to_dict(), 'image_size': config.data.image_size,
               'channels': config.data.channels, 'num_classes': config.data.num_classes}
  if config.diffusion.get('learn_sigma', False):  # twice the output channels
    signature['learn_sigma'] = True
  text = config.get('text')
  if text is not None and text.get('encoder', ''):  # text models: the tower, the tokenizer and their use of labels
    signature['text'] = {k: text[k] for k in ('encoder', 'width', 'depth', 'num_heads', 'mlp_ratio', 'use_labels')}
    signature['text'].update(tokenizer=config.data.tokenizer, vocab_path=config.data.vocab_path,
                             max_tokens=config.data.max_tokens)
  return signature


def _json_normal(x):
  return json.loads(json.dumps(x))


def signature_mismatch(saved, expected):
  """Human-readable differences between two signatures ('' if they match)."""
  saved, expected = _json_normal(saved), _json_normal(expected)
  diffs = []
  for key in sorted(set(saved) | set(expected)):
    a, b = saved.get(key), expected.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      for sub in sorted(set(a) | set(b)):
        if a.get(sub) != b.get(sub):
          diffs.append(f'{key}.{sub}: checkpoint has {a.get(sub)!r}, config has {b.get(sub)!r}')
    elif a != b:
      diffs.append(f'{key}: checkpoint has {a!r}, config has {b!r}')
  return '; '.join(diffs)


class CheckpointStore:

  def __init__(self, workdir, keep=3):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, signature):
    try:
      self.manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_json_normal(signature))), force=True)
      self.manager.wait_until_finished()
    except OSError as e:
      previous = [s for s in self.steps() if s != step]
      kept = f'the checkpoint of step {previous[-1]} is intact' if previous else 'no earlier checkpoint exists'
      reason = 'the disk is full' if e.errno == errno.ENOSPC else str(e)
      raise RuntimeError(f'saving the checkpoint of step {step} to {self.directory} failed: {reason}; {kept}. '
                         'Free space (or point --workdir elsewhere) and restart to resume.') from e

  def read_signature(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def check_signature(self, expected):
    """Raises if the newest checkpoint was written by a different model; returns quietly otherwise."""
    for step in reversed(self.steps()):
      try:
        saved = self.read_signature(step)
      except Exception:  # unreadable metadata: restore_latest reports it and falls back
        continue
      diff = signature_mismatch(saved, expected)
      if diff:
        raise ValueError(f'{self.directory} holds checkpoints of a different model (step {step}): {diff}. '
                         'Use a new --workdir, or restore the config that wrote them; nothing was changed.')
      return

  def restore_latest(self, abstract_state):
    """(state, step) from the newest checkpoint that restores, or (None, None) if there is none.

    abstract_state carries the target shardings (jax.ShapeDtypeStruct with .sharding), so a
    checkpoint written under one mesh restores under another. A corrupt or partial checkpoint is
    reported and the one before it is tried; none is deleted.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored['state'], step
      except Exception as e:
        logging.warning('checkpoint of step %d in %s could not be restored (%s: %s); trying the previous one',
                        step, self.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else '')
    if steps:
      raise RuntimeError(f'none of the checkpoints {steps} in {self.directory} could be restored; they were '
                         'left in place. Move them away to start fresh.')
    return None, None

  def close(self):
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)

"""Orbax checkpoints in <workdir>/checkpoints: save, find the newest restorable one, refuse a mismatch.

Each checkpoint holds the whole TrainState (params, EMA, optimizer state, step, RNG key, skipped
update counters) and a JSON record of the model signature. The input pipeline needs no state of
its own: its batches are a function of (seed, step). Orbax writes into a temporary directory and
renames it when complete, so a process killed mid-save leaves the previous checkpoint intact.
The power-function EMAs (TrainState.power_ema, training/ema.py) are an item of their own, 'power_ema', written only when
the run tracks some: the 'state' item has the layout of checkpoints written before they existed, which restore
as they are. Sampling reads the parameters or the EMA alone (`restore_weights`).
"""
import dataclasses
import errno
import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def model_signature(config):
  """What must match between a checkpoint and the config that restores it."""
  signature = {
      'model': config.model.to_dict(), 'image_size': config.data.image_size, 'channels': config.data.channels,
      'num_classes': config.data.num_classes
  }
  if config.diffusion.learn_sigma:  # twice the output channels
    signature['learn_sigma'] = True
  if config.optim.ema_sigma_rels:  # the power-function EMAs a resume restores (sampling ignores them)
    signature['ema_sigma_rels'] = [float(s) for s in config.optim.ema_sigma_rels]
  repa = config.get('repa')
  if repa is not None and repa.get('encoder', ''):  # REPA's projector: parameters of the DiT
    signature['repa'] = {k: repa[k] for k in ('depth', 'projector_dim', 'encoder_dim')}
  text = config.get('text')
  if text is not None and text.get('encoder', ''):  # text models: the tower, the tokenizer and their use of labels
    signature['text'] = {k: text[k] for k in ('encoder', 'width', 'depth', 'num_heads', 'mlp_ratio', 'use_labels')}
    signature['text'].update(tokenizer=config.data.tokenizer, vocab_path=config.data.vocab_path,
                             max_tokens=config.data.max_tokens)
  return signature


def _json_normal(x):
  return json.loads(json.dumps(x))


# Signature fields that only a resume needs: sampling and evaluation ignore them.
TRAINING_ONLY_FIELDS = ('ema_sigma_rels',)


def signature_mismatch(saved, expected, ignore=()):
  """Human-readable differences between two signatures ('' if they match), leaving out the keys in `ignore`."""
  saved, expected = _json_normal(saved), _json_normal(expected)
  saved, expected = ({k: v for k, v in d.items() if k not in ignore} for d in (saved, expected))
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


def _is_train_state(state):
  return dataclasses.is_dataclass(state) and hasattr(state, 'power_ema')


def _items(state):
  """The checkpoint items of a state: a TrainState's power-function EMAs apart (when it has some), any other
  pytree as the 'state' item."""
  if not _is_train_state(state):
    return {'state': state}
  items = {'state': {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != 'power_ema'}}
  if state.power_ema:
    items['power_ema'] = list(state.power_ema)
  return items


def _from_items(abstract_state, restored):
  if not _is_train_state(abstract_state):
    return restored['state']
  return type(abstract_state)(**restored['state'], power_ema=tuple(restored.get('power_ema', ())))


class CheckpointStore:
  """<workdir>/<name>: orbax steps, the newest `keep` kept (None: all), each with a JSON signature."""
  def __init__(self, workdir, keep=3, name='checkpoints'):
    self.directory = os.path.abspath(os.path.join(workdir, name))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, signature):
    """Writes `step`. A step already on disk (one restore_latest could not restore and fell back from, or a
    snapshot written after the checkpoint a run resumed from) is first moved aside, never deleted."""
    if step in self.steps():
      self._move_aside(step)
    items = {name: ocp.args.StandardSave(tree) for name, tree in _items(state).items()}
    try:
      self.manager.save(int(step), args=ocp.args.Composite(meta=ocp.args.JsonSave(_json_normal(signature)), **items),
                        force=True)
      self.manager.wait_until_finished()
    except OSError as e:
      previous = [s for s in self.steps() if s != step]
      kept = f'the checkpoint of step {previous[-1]} is intact' if previous else 'no earlier checkpoint exists'
      reason = 'the disk is full' if e.errno == errno.ENOSPC else str(e)
      raise RuntimeError(f'saving the checkpoint of step {step} to {self.directory} failed: {reason}; {kept}. '
                         'Free space (or point --workdir elsewhere) and restart to resume.') from e

  def _move_aside(self, step):
    """<directory>/<step> -> <directory>/<step>.replaced[.k], which orbax does not count as a step."""
    if jax.process_index() == 0:
      target, k = os.path.join(self.directory, f'{step}.replaced'), 1
      while os.path.exists(target):
        target, k = os.path.join(self.directory, f'{step}.replaced.{k}'), k + 1
      os.rename(os.path.join(self.directory, str(step)), target)
      logging.warning(
          '%s/%d already existed (a run stopped after writing it, or it could not be restored); '
          'moved it to %s to write step %d anew', self.directory, step, target, step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint {self.directory} {step} moved aside')
    self.manager.reload()

  def restore(self, step, abstract_state):
    """The state of `step`, placed as abstract_state's shardings (jax.ShapeDtypeStruct with .sharding)."""
    items = {name: ocp.args.StandardRestore(tree) for name, tree in _items(abstract_state).items()}
    return _from_items(abstract_state, self.manager.restore(step, args=ocp.args.Composite(**items)))

  def read_signature(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def check_signature(self, expected, ignore=()):
    """Raises if the newest checkpoint was written by a different model (comparing the signature but the keys in
    `ignore`); returns quietly otherwise."""
    for step in reversed(self.steps()):
      try:
        saved = self.read_signature(step)
      except Exception:  # unreadable metadata: restore_latest reports it and falls back
        continue
      diff = signature_mismatch(saved, expected, ignore)
      if diff:
        raise ValueError(f'{self.directory} holds checkpoints of a different model (step {step}): {diff}. '
                         'Use a new --workdir, or restore the config that wrote them; nothing was changed.')
      return

  def restore_latest(self, abstract_state, alternatives=tuple):
    """(state, step) from the newest checkpoint that restores, or (None, None) if there is none.

    abstract_state carries the target shardings (jax.ShapeDtypeStruct with .sharding), so a
    checkpoint written under one mesh restores under another. `alternatives()`, called once if abstract_state's
    layout fails: (abstract, convert, what) for layouts another config writes, each tried in turn; convert turns
    what restores into abstract_state's layout. A corrupt or partial checkpoint is reported and the one before it
    is tried; none is deleted.
    """
    layouts = None

    def restore(step):
      nonlocal layouts
      try:
        return self.restore(step, abstract_state)
      except Exception:
        layouts = alternatives() if layouts is None else layouts
        for abstract, convert, what in layouts:
          try:
            state = convert(self.restore(step, abstract))
          except Exception:  # not that layout either
            continue
          logging.warning('checkpoint of step %d in %s restored from %s', step, self.directory, what)
          return state
        raise

    return self._newest(restore)

  def restore_weights(self, abstract_weights, step=None):
    """(weights, step) from the newest checkpoint that restores, or (None, None); with `step`, that step's (a
    FileNotFoundError listing the steps there if it has none). Only the entries of `abstract_weights` (a dict of
    TrainState fields, e.g. {'ema_params': ...}, with their target shardings) are read, none of the optimizer
    state, so sampling holds the weights it uses and not three times as much. Needs a store whose manager has not
    restored the full state yet (a fresh one)."""
    args = ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=abstract_weights, restore_args=ocp.checkpoint_utils.construct_restore_args(
            abstract_weights), partial_restore=True))
    restore = lambda s: self.manager.restore(s, args=args)['state']
    if step is None:
      return self._newest(restore)
    if step not in self.steps():
      raise FileNotFoundError(f'{self.directory} holds no checkpoint of step {step}; its steps: {self.steps()}')
    return restore(step), step

  def _newest(self, restore):
    """(restore(step), step) for the newest step that restores; a failing one is reported and the one before it
    tried, none deleted; (None, None) without checkpoints."""
    steps = self.steps()
    for step in reversed(steps):
      try:
        return restore(step), step
      except Exception as e:
        logging.warning('checkpoint of step %d in %s could not be restored (%s: %s); trying the previous one', step,
                        self.directory,
                        type(e).__name__,
                        str(e).splitlines()[0] if str(e) else '')
    if steps:
      raise RuntimeError(f'none of the checkpoints {steps} in {self.directory} could be restored; they were '
                         'left in place. Move them away to start fresh.')
    return None, None

  def close(self):
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)

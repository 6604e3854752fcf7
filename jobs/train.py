"""--mode=train: the loop around the jitted train step (training/step.py), with EMA, checkpoints, metrics, sample
grids, evaluators and the held-out loss.

It runs `config.train.steps_per_call` steps per jitted call, resumes from the newest checkpoint in the workdir,
stops cleanly on SIGTERM/SIGINT, refuses non-finite updates and writes TensorBoard events.
"""
import collections
import contextlib
import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from evaluation import create_evaluator
from input_pipeline import StepBatcher, create_source, prefetch_batches
from input_pipeline.files import write_png
from input_pipeline.images import image_grid
from jobs.conditions import null_tokens
from jobs.guided import load_classifier
from jobs.repa import load_repa_encoder
from jobs.restore import setup, toggled_clip_layout, write_config
from jobs.sample import generate_samples, make_generate_fn
from jobs.sweeps import get_field
from training import ema as ema_lib
from training import sharding as sharding_lib
from training.checkpoints import model_signature
from training.heldout import VAL_SEED, HeldOutLoss
from training.state import count_params, create_state, make_init
from training.step import check_batch_sizes, make_train_step
from training.writers import ProfileWindow, create_writer

# The config fields that shape neither of a run's programs (the state's init and the train step): a run whose config
# differs from a recent one of this process only in them, on the same mesh, reuses that run's traced and compiled
# programs, as a sweep over seeds in ablate.py or a resume does. tests/training/test_train.py changes each of them and
# checks that both programs lower to the same text.
HOST_ONLY_FIELDS = ('seed', 'train.num_steps', 'train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
                    'train.nonfinite', 'train.profile_steps', 'train.sample_every', 'train.sample_grid',
                    'train.steps_per_call', 'train.ema_snapshot_every', 'data.path', 'data.prefetch',
                    'data.num_workers', 'sample', 'evals', 'val', 'encode')
_RECENT_PROGRAMS = collections.OrderedDict()  # programs_key -> (init, step_fn), the newest last
KEEP_PROGRAMS = 4


class NonFiniteError(RuntimeError):
  pass


def programs_key(config, mesh):
  """What a run's programs depend on: its config less HOST_ONLY_FIELDS, and the mesh."""
  fields = config.to_dict()
  for name in HOST_ONLY_FIELDS:
    parent, _, last = name.rpartition('.')
    del (get_field(fields, parent) if parent else fields)[last]
  return json.dumps(fields, sort_keys=True, default=repr), mesh


def training_programs(config, model, tx, mesh, shardings, repa_encoder):
  """(init, step_fn): the state's init (training/state.make_init) and the stacked train step, those of a recent run of
  this process when only HOST_ONLY_FIELDS differ. A REPA run's step holds its encoder, loaded anew each run."""
  key = None if repa_encoder is not None else programs_key(config, mesh)
  if key in _RECENT_PROGRAMS:
    _RECENT_PROGRAMS.move_to_end(key)
    return _RECENT_PROGRAMS[key]
  programs = (make_init(config, model, tx, shardings),
              make_train_step(config, model, tx, mesh, shardings, stacked=True, null_tokens=null_tokens(config),
                              repa_tokens=repa_encoder and repa_encoder.tokens))
  if key is not None:
    _RECENT_PROGRAMS[key] = programs
    while len(_RECENT_PROGRAMS) > KEEP_PROGRAMS:
      _RECENT_PROGRAMS.popitem(last=False)
  return programs


class PreemptionFlag:
  """First SIGTERM/SIGINT: finish the call (train.steps_per_call steps), checkpoint, exit 0. A second one: exit at
  once."""
  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:
      logging.error('second %s: exiting now without saving', signal.Signals(signum).name)
      os._exit(128 + signum)
    self.requested = True
    logging.warning(
        '%s received: finishing this call (train.steps_per_call steps) and saving a checkpoint; send it '
        'again to exit now',
        signal.Signals(signum).name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_finite(state, config):
  """Raises NonFiniteError in 'stop' mode if any update was non-finite (no such update was applied)."""
  first = int(state.first_nonfinite_step)
  if first >= 0 and config.train.nonfinite == 'stop':
    raise NonFiniteError(
        f'non-finite loss or gradient at step {first} (no update from it was applied, and no checkpoint was '
        'written after it). Lower the learning rate, enable gradient clipping, or set '
        "--config.train.nonfinite=skip to drop such updates and count them.")


def restart_nonfinite_record(state, config):
  """A checkpoint of a train.nonfinite='skip' run records the first update it skipped; resumed with 'stop', that old
  record would stop the run at its first log step. The record starts again (nonfinite_count keeps the total)."""
  first = int(state.first_nonfinite_step)
  if first < 0 or config.train.nonfinite != 'stop':
    return state
  logging.warning(
      'the checkpoint comes from a run that skipped %d non-finite update(s), the first at step %d '
      "(train.nonfinite='skip'); with 'stop' this run stops at the next one", int(state.nonfinite_count), first)
  sharding = state.first_nonfinite_step.sharding
  cleared = jax.jit(lambda x: jnp.full_like(x, -1), out_shardings=sharding)(state.first_nonfinite_step)
  return state.replace(first_nonfinite_step=cleared)


def run_evaluators(config, evaluators, step, generate_fn, params, mesh, writer, workdir, final=False):
  """Runs the evaluators due at `step`; a failing evaluator is logged and training goes on."""
  results = {}
  for name, (evaluator, ev_config) in evaluators.items():
    every = ev_config.get('every_steps', 0)
    if not (final or (every and step % every == 0)):
      continue
    try:
      t0 = time.time()
      images, cond = generate_samples(config, generate_fn, params, mesh, ev_config.get('num_samples', 1000),
                                      ev_config.get('seed', 12345))
      metrics = {f'eval/{k}': v for k, v in evaluator(images, cond).items()}
      metrics[f'eval/{name}_seconds'] = time.time() - t0
      results.update(metrics)
    except Exception as e:  # an evaluator must never take the run down
      logging.exception('evaluator %s failed at step %d: %s', name, step, e)
  if results:
    writer.write_scalars(step, results)
  return results


def run_held_out(held_out, state, step, writer):
  """The held-out loss (training/heldout.py) at `step`; a failure is logged and training goes on."""
  try:
    writer.write_scalars(step, held_out(state))
  except Exception as e:  # as an evaluator, it must never take the run down
    logging.exception('held-out loss failed at step %d: %s', step, e)


def write_sample_grid(config, generate_fn, params, mesh, writer, workdir, step):
  """The PNG grid of samples at `step`; non-finite samples are logged and training goes on, as when an evaluator
  fails."""
  try:
    images, _ = generate_samples(config, generate_fn, params, mesh, config.train.sample_grid, seed=0)
  except FloatingPointError as e:
    logging.error('no sample grid at step %d: %s', step, e)
    return
  grid = image_grid(images)
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
    path = os.path.join(workdir, 'samples', f'step_{step:08d}.png')
    write_png(path, grid)
    writer.write_images(step, {'samples': grid})
    logging.info('wrote %s', path)


def train_and_evaluate(config, workdir):
  """Trains until config.train.num_steps, resuming from the newest checkpoint in workdir."""
  # Bad paths, datasets and weight files fail before anything is written. REPA reads the images beside latents.
  source = create_source(config.data, pixels=bool(config.repa.encoder))
  val_source = held_out_source(config) if config.val.every_steps else None
  evaluators = {name: (create_evaluator(name, config, ev), ev) for name, ev in config.evals.items()}
  classifier = load_classifier(config)  # guides the grids and evaluators' samples, if config.sample names one
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  model, tx, mesh, abstract, shardings, store = setup(config, workdir)
  check_batch_sizes(config, mesh)  # needs the mesh: before any state is made or written

  state, start_step = store.restore_latest(abstract,
                                           lambda: [toggled_clip_layout(config, model, mesh, abstract, shardings)])
  if start_step is not None and start_step >= config.train.num_steps:
    logging.info(
        '%s already holds the checkpoint of step %d >= config.train.num_steps=%d; nothing to train '
        '(raise --config.train.num_steps to continue)', store.directory, start_step, config.train.num_steps)
    store.close()
    return state
  repa_encoder = load_repa_encoder(config, mesh)  # REPA's frozen encoder: an input of each step, never trained
  init, step_fn = training_programs(config, model, tx, mesh, shardings, repa_encoder)
  if state is None:
    state, start_step = create_state(config, model, tx, mesh, shardings, init), 0
    logging.info('starting from scratch: %s with %.2fM parameters on a %s mesh', config.model.name,
                 count_params(state.params) / 1e6, dict(mesh.shape))
  else:
    logging.info('resumed from the checkpoint of step %d in %s', start_step, store.directory)
    state = restart_nonfinite_record(state, config)
  if is_main:
    write_config(config, workdir)

  frozen_inputs = () if repa_encoder is None else (repa_encoder.params,)
  generate_fn = make_generate_fn(config, model, mesh, classifier)
  batcher = StepBatcher(source, config.train.batch_size, config.seed, config.data.random_flip, jax.process_index(),
                        jax.process_count(), config.data.random_crop)
  writer = create_writer(workdir, is_main)
  profile = ProfileWindow(config.train.profile_steps, os.path.join(workdir, 'tensorboard'))
  held_out = None if val_source is None else held_out_loss(config, model, mesh, val_source)
  sigma_rels, snapshot_every = ema_lib.power_ema_sigma_rels(config), config.train.ema_snapshot_every
  snapshots = ema_lib.snapshot_store(workdir) if sigma_rels else None
  num_steps = config.train.num_steps
  pending, last_log, last_log_step, last_saved = [], time.time(), start_step, start_step
  previous_start = previous_done = start_step  # the call before the one in flight (the progress bar's)
  bar = tqdm(total=num_steps, initial=start_step, unit='step', disable=not is_main, dynamic_ncols=True)

  def save(step):
    nonlocal last_saved
    check_finite(state, config)
    if step != last_saved or not store.steps():
      store.save(step, state, model_signature(config))
      last_saved = step

  try:
    if held_out and start_step == 0:
      run_held_out(held_out, state, 0, writer)
    # Chunks end on multiples of steps_per_call, which divides every period below (validate_config), so logs,
    # grids, evaluations and checkpoints fall on chunk ends; a resume off that grid first runs a short chunk. Closing
    # the stream ends its prefetch thread however the loop ends.
    stream = prefetch_batches(batcher, start_step, num_steps, config.train.steps_per_call, config.data.prefetch)
    first_call = time.time()
    with PreemptionFlag() as preemption, contextlib.closing(stream):
      for start, done, host_batches in stream:
        batches = sharding_lib.host_batch_to_global(host_batches, mesh, stacked=True)
        state, metrics = step_fn(state, batches, *frozen_inputs)
        if start == start_step:  # the first call compiles the step: say what that costs
          jax.block_until_ready(metrics)
          logging.info('first call (compilation and %d step(s)): %.1f s', done - start, time.time() - first_call)
        if pending:  # the bar counts steps the device finished, one call behind the dispatch: it shows throughput
          jax.block_until_ready(pending[-1])
          bar.update(previous_done - previous_start)
        pending.append(metrics)
        previous_start, previous_done = start, done
        profile.after_call(done, state.step)
        if done % config.train.log_every == 0 or done == num_steps:
          summary = {
              k: float(np.mean(v))
              for k, v in jax.device_get(jax.tree.map(lambda *xs: jnp.concatenate(xs), *pending)).items()
          }
          now = time.time()
          summary['steps_per_second'] = (done - last_log_step) / (now - last_log)
          summary['nonfinite_updates'] = int(state.nonfinite_count)
          bar.update(done - previous_start)
          pending, last_log, last_log_step = [], now, done
          writer.write_scalars(done, summary)
          bar.set_postfix(loss=f"{summary['loss']:.4f}")
          check_finite(state, config)
        if config.train.sample_grid and config.train.sample_every and done % config.train.sample_every == 0:
          write_sample_grid(config, generate_fn, state.ema_params, mesh, writer, workdir, done)
        run_evaluators(config, evaluators, done, generate_fn, state.ema_params, mesh, writer, workdir)
        if held_out and done % config.val.every_steps == 0:
          run_held_out(held_out, state, done, writer)
        if snapshots and done % snapshot_every == 0:
          ema_lib.save_snapshot(snapshots, done, state, sigma_rels)
        if done % config.train.checkpoint_every == 0:
          save(done)
        if preemption.requested:
          save(done)
          logging.warning('stopped at step %d after a signal; checkpoint saved, rerun the same command to resume', done)
          return state
      final_step = int(state.step)
      if snapshots and final_step % snapshot_every:
        ema_lib.save_snapshot(snapshots, final_step, state, sigma_rels)
      save(final_step)
      if config.train.sample_grid and not (config.train.sample_every and final_step % config.train.sample_every == 0):
        write_sample_grid(config, generate_fn, state.ema_params, mesh, writer, workdir, final_step)
      if held_out and final_step % config.val.every_steps:
        run_held_out(held_out, state, final_step, writer)
      if evaluators:
        run_evaluators(config, {
            k: v
            for k, v in evaluators.items()
            if not (v[1].get('every_steps', 0) and final_step % v[1].every_steps == 0)
        }, final_step, generate_fn, state.ema_params, mesh, writer, workdir, final=True)
      return state
  finally:
    profile.stop()
    bar.close()
    writer.flush()
    writer.close()
    store.close()
    if snapshots:
      snapshots.close()


def validation_data_config(config):
  """config.data with the held-out split (tfds) or directory (image_folder, latents) of config.val."""
  data = config.data.copy_and_resolve_references()
  if config.val.split:
    data.split = config.val.split
  if config.val.path:
    data.path = config.val.path
  return data


def held_out_loss(config, model, mesh, source=None):
  """The HeldOutLoss of config.val over `source` (default: the held-out source of config.val)."""
  source = held_out_source(config) if source is None else source
  batcher = StepBatcher(source, config.val.batch_size, VAL_SEED, process_index=jax.process_index(),
                        process_count=jax.process_count())
  return HeldOutLoss(config, model, mesh, batcher)


def held_out_source(config):
  """The held-out data source, checked to hold config.val.num_examples examples."""
  source = create_source(validation_data_config(config))
  if config.val.num_examples > len(source):
    raise ValueError(f'config.val.num_examples={config.val.num_examples} is more than the {len(source)} examples of '
                     f'the held-out data; lower it to at most {len(source)}')
  return source

"""The training loop: sharded jitted steps, EMA, checkpoints, metrics, sample grids and evaluators.

`train_step` is a pure function of (state, batch); everything it needs from the config is bound
before jitting. The loop around it runs `config.train.steps_per_call` steps per jitted call (`train_steps`,
a scan over stacked batches), resumes from the newest checkpoint in the workdir, stops cleanly on
SIGTERM/SIGINT, refuses non-finite updates and writes TensorBoard events.
"""
import functools
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sharding as sharding_lib
from checkpoints import TRAINING_ONLY_FIELDS, CheckpointStore, model_signature
from diffusion.classifier_guidance import classifier_loss
from diffusion.learned_variance import hybrid_loss_per_example
from diffusion.objectives import loss_weight, mse_per_example, noised_batch
from diffusion.schedules import alphas_cumprod_for
import ema as ema_lib
from evaluation import create_evaluator
from input_pipeline import StepBatcher, create_source, prefetch_batches
from models import build_model
from models.conditioning import condition_from_batch, drop_condition, is_classifier
from models.text_encoder import frozen_parameter_groups
from sample import generate_samples, image_grid, load_classifier, make_generate_fn, write_png
from train_state import count_params, create_optimizer, create_state, learning_rate_schedule, state_shardings
from validation import HeldOutLoss, held_out_source
from writers import ProfileWindow, create_writer


class NonFiniteError(RuntimeError):
  pass


def loss_inputs(batch, cond, noise_rng, alphas_cumprod, config):
  """What the loss of a batch needs besides the params: the noised images, times, condition, and the targets and
  weights (a classifier: the labels), drawn from noise_rng."""
  x0 = batch['image'].astype(jnp.float32)  # latents arrive in their stored float16
  x_t, t, target = noised_batch(noise_rng, x0, alphas_cumprod, config.diffusion)
  inputs = {'x_t': x_t, 't': t, 'cond': cond}
  if is_classifier(config):
    inputs['label'] = batch['label']
  else:
    inputs.update(target=target, x0=x0, weight=loss_weight(
        config.diffusion.get('loss_weighting', 'uniform'), config.diffusion.objective, alphas_cumprod,
        t.astype(jnp.int32), config.diffusion.get('min_snr_gamma', 5.0)))
  return inputs


def batch_loss(params, inputs, dropout_rng, *, model, alphas_cumprod, config, train=True):
  """(mean loss, extra metrics) of a (micro)batch of noised examples: `inputs` from `loss_inputs`; with
  train=False the model's dropout is off (dropout_rng unused)."""
  out = model.apply({'params': params}, inputs['x_t'], inputs['t'], **inputs['cond'], train=train,
                    rngs={'dropout': dropout_rng} if train else {})
  if is_classifier(config):  # ADM's noisy classifier (classifier_train.py): uniform timesteps, cross-entropy
    loss, correct = classifier_loss(out, inputs['label'])
    return loss.mean(), {'accuracy': correct.mean()}
  if config.diffusion.get('learn_sigma', False):  # Improved DDPM's hybrid loss (diffusion/learned_variance.py)
    loss, vlb = hybrid_loss_per_example(config.diffusion.objective, out, inputs['target'], inputs['x0'],
                                        inputs['x_t'], inputs['t'].astype(jnp.int32), alphas_cumprod,
                                        inputs['weight'])
    return loss.mean(), {'vlb': vlb.mean()}
  return (inputs['weight'] * mse_per_example(out, inputs['target'])).mean(), {}


def microbatches(x, k, sharding=None):
  """[B, ...] -> [k, B / k, ...], microbatch i holding examples i, i + k, i + 2k, ...: with B split over the
  devices in blocks of B / devices, a multiple of k, every microbatch keeps an equal share on every device and the
  split moves no data."""
  x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def accumulated_loss_and_grads(params, inputs, dropout_rng, k, micro_sharding, **kwargs):
  """((loss, extra), grads) of the whole batch as the mean over k equal microbatches, one at a time in a
  `lax.scan` (activations of B / k examples live at once; gradients accumulate in the params' float32).

  On a data-parallel mesh (fsdp = 1, data > 1) the scan runs on each device's rows (a `shard_map` over 'data') and the
  gradients are averaged across devices once per update, as DDP's no_sync does; XLA would otherwise all-reduce them
  after every microbatch. With fsdp > 1 the gradients are reduce-scattered per microbatch, as in PyTorch's FSDP."""
  grad_fn = jax.value_and_grad(functools.partial(batch_loss, **kwargs), has_aux=True)
  if k == 1:
    return grad_fn(params, inputs, dropout_rng)
  mesh = None if micro_sharding is None else micro_sharding.mesh
  per_device = mesh is not None and mesh.shape['fsdp'] == 1 and mesh.shape['data'] > 1

  def accumulate(params, inputs, dropout_rng):
    if per_device:  # each device's rows draw their own dropout masks
      dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index('data'))
    micro = jax.tree.map(lambda x: microbatches(x, k, None if per_device else micro_sharding), inputs)

    def add_microbatch(total, i_and_inputs):
      i, mb = i_and_inputs
      value = grad_fn(params, mb, jax.random.fold_in(dropout_rng, i))
      return jax.tree.map(jnp.add, total, value), None

    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), dropout_rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(k), micro))
    mean = jax.tree.map(lambda x: x / k, total)
    return jax.lax.pmean(mean, 'data') if per_device else mean

  if not per_device:
    return accumulate(params, inputs, dropout_rng)
  P = jax.sharding.PartitionSpec
  return jax.shard_map(accumulate, mesh=mesh, in_specs=(P(), P('data'), P()), out_specs=P(), check_vma=False)(
      params, inputs, dropout_rng)


def train_step(state, batch, *, model, tx, alphas_cumprod, config, micro_sharding=None):
  """One update: noise the batch, regress the target (a classifier: predict the label of the noised image), AdamW,
  EMA (and the power-function EMAs of ema.py); a non-finite loss or gradient leaves params, EMA and optimizer state unchanged and is counted.

  With config.train.grad_accum_steps = k > 1 the gradient is the mean over k microbatches of the batch, taken one
  after the other: the times, noise and label dropout are drawn for the whole batch as with k = 1, so the update is
  the same (within float32 rounding) but for the model's dropout masks, and the activations held are k times fewer.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  label_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  cond = drop_condition(label_rng, condition_from_batch(batch, config), config.diffusion.label_dropout, config)
  inputs = loss_inputs(batch, cond, noise_rng, alphas_cumprod, config)  # no params: outside the gradient
  (loss, extra), grads = accumulated_loss_and_grads(
      state.params, inputs, dropout_rng, config.train.get('grad_accum_steps', 1), micro_sharding, model=model,
      alphas_cumprod=alphas_cumprod, config=config)
  grad_norm = optax.tree_utils.tree_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_lib.ema_decay(config.optim, state.step)
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
  gammas = [ema_lib.sigma_rel_to_gamma(s) for s in ema_lib.power_ema_sigma_rels(config)]
  power_ema = ema_lib.update_power_emas(state.power_ema, params, gammas, state.step)

  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  # A skipped update keeps the moments but not the optimizer's step counts (its integer leaves), so that the
  # learning-rate schedule follows state.step: the logged rate is the one used, and a decay ends at its step.
  opt_state = jax.tree.map(lambda n, o: n if jnp.issubdtype(n.dtype, jnp.integer) else jnp.where(finite, n, o),
                           opt_state, state.opt_state)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
      opt_state=opt_state, power_ema=keep(power_ema, state.power_ema),
      nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                                     state.first_nonfinite_step))
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': learning_rate_schedule(config.optim)(state.step),
             **extra}
  return new_state, metrics


def train_steps(state, batches, **kwargs):
  """`train_step` once per step of batches stacked [k, B, ...] in one program; the metrics come stacked [k].

  k > 1 is a `lax.scan`. k = 1 (the default, and a short chunk) calls the step directly: on XLA:CPU a U-Net
  step inside a scan ran 25x slower (0.13 vs 3.2 steps/s for the quickstart), even for one trip."""
  if jax.tree.leaves(batches)[0].shape[0] == 1:
    state, metrics = train_step(state, jax.tree.map(lambda x: x[0], batches), **kwargs)
    return state, jax.tree.map(lambda x: jnp.asarray(x)[None], metrics)  # a constant learning rate is a float
  return jax.lax.scan(functools.partial(train_step, **kwargs), state, batches)


def make_train_step(config, model, tx, mesh, shardings, stacked=False):
  """The jitted `train_step`, or with `stacked` `train_steps` (any k; each new k compiles once)."""
  check_batch_sizes(config, mesh)
  step_fn = functools.partial(train_steps if stacked else train_step, model=model, tx=tx,
                              alphas_cumprod=jnp.asarray(alphas_cumprod_for(config)), config=config,
                              micro_sharding=sharding_lib.batch_sharding(mesh, stacked=True))
  return jax.jit(step_fn, in_shardings=(shardings, sharding_lib.batch_sharding(mesh, stacked)),
                 out_shardings=(shardings, sharding_lib.replicated(mesh)), donate_argnums=0)


def check_batch_sizes(config, mesh):
  """The train (and held-out) batches split evenly over the mesh's devices, and each device's share of the train batch
  into grad_accum_steps equal microbatches."""
  k, batch, devices = config.train.get('grad_accum_steps', 1), config.train.batch_size, mesh.size
  sizes = {'train.batch_size': batch}
  if config.get('val') and config.val.every_steps:
    sizes['val.batch_size'] = config.val.batch_size
  for field, size in sizes.items():
    if size % devices:
      raise ValueError(f'config.{field}={size} does not split over the {devices} devices of the mesh: make it a '
                       f'multiple of {devices}')
  if (batch // devices) % k:
    raise ValueError(f'config.train.grad_accum_steps={k} must divide the batch of each device, '
                     f'{batch // devices} (config.train.batch_size={batch} over {devices} devices): choose a '
                     f'grad_accum_steps that divides {batch // devices}, or a batch_size that is a multiple of '
                     f'{k * devices}')


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
    logging.warning('%s received: finishing this call (train.steps_per_call steps) and saving a checkpoint; send it '
                    'again to exit now', signal.Signals(signum).name)

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
  logging.warning('the checkpoint comes from a run that skipped %d non-finite update(s), the first at step %d '
                  "(train.nonfinite='skip'); with 'stop' this run stops at the next one", int(state.nonfinite_count),
                  first)
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
  """The held-out loss (validation.py) at `step`; a failure is logged and training goes on."""
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


def setup(config, workdir, training=True):
  """Model, optimizer, mesh, shardings, checkpoint store; refuses a workdir of another model (for inference, one of
  the same model trained with other settings of the signature's TRAINING_ONLY_FIELDS is fine)."""
  model = build_model(config)
  tx = create_optimizer(config.optim, frozen_parameter_groups(config))
  mesh = sharding_lib.create_mesh(config.mesh)
  abstract, shardings = state_shardings(config, model, tx, mesh)
  store = CheckpointStore(workdir, config.train.keep_checkpoints)
  store.check_signature(model_signature(config), ignore=() if training else TRAINING_ONLY_FIELDS)
  return model, tx, mesh, abstract, shardings, store


def toggled_clip_layout(config, model, mesh, abstract, shardings):
  """(abstract, convert, what) for checkpoints written with optim.grad_clip off while it is on, or on while off
  (NonFiniteError advises turning it on): clipping adds an optax.chain level to the optimizer state, with no arrays
  of its own, so the arrays carry over one to one. `abstract`: the layout restored otherwise."""
  optim = config.optim.copy_and_resolve_references()
  optim.grad_clip = 0.0 if config.optim.grad_clip > 0 else 1.0
  other, _ = state_shardings(config, model, create_optimizer(optim, frozen_parameter_groups(config)), mesh)
  other = other.replace(power_ema=abstract.power_ema)
  treedef = jax.tree.structure(abstract.opt_state)

  def convert(state):
    leaves = [jax.device_put(x, s) for x, s in zip(jax.tree.leaves(state.opt_state),
                                                    jax.tree.leaves(shardings.opt_state))]
    return state.replace(opt_state=jax.tree.unflatten(treedef, leaves))

  was = 'off' if config.optim.grad_clip > 0 else 'on'
  return other, convert, f'a run with gradient clipping {was} (optim.grad_clip); its optimizer state carries over'


def write_config(config, workdir):
  """<workdir>/config.json: the run's config, which a guided sampler reads back (sample.load_classifier)."""
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def restore_for_inference(config, workdir, use_ema=True):
  """(model, params, step, mesh) from the newest checkpoint in workdir, for sampling and evaluation: its EMA, or
  with use_ema=False its params; with config.sample.ema_sigma_rel > 0 the power-function EMA of that width rebuilt
  from the run's snapshots (ema.py), and step is the snapshot step."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'no checkpoints in {workdir}/checkpoints; train first with --mode=train '
                            f'--workdir={workdir}')
  model, tx, mesh, abstract, shardings, store = setup(config, workdir, training=False)
  try:
    if use_ema and config.sample.ema_sigma_rel:
      params, step = ema_lib.reconstruct(config, workdir, abstract.params, mesh)
      return model, params, step, mesh
    abstract = abstract.replace(power_ema=())  # sampling needs none of the power-function EMAs
    state, step = store.restore_latest(
        abstract, lambda: [toggled_clip_layout(config, model, mesh, abstract, shardings)])
  finally:
    store.close()
  if state is None:
    raise FileNotFoundError(f'{workdir}/checkpoints holds no checkpoint; train first with --mode=train')
  return model, state.ema_params if use_ema else state.params, step, mesh


def train_and_evaluate(config, workdir):
  """Trains until config.train.num_steps, resuming from the newest checkpoint in workdir."""
  source = create_source(config.data)  # bad paths, datasets and weight files fail before anything is written
  val_source = held_out_source(config) if config.val.every_steps else None
  evaluators = {name: (create_evaluator(name, config, ev), ev) for name, ev in config.evals.items()}
  classifier = load_classifier(config)  # guides the grids and evaluators' samples, if config.sample names one
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  model, tx, mesh, abstract, shardings, store = setup(config, workdir)
  check_batch_sizes(config, mesh)  # needs the mesh: before any state is made or written

  state, start_step = store.restore_latest(
      abstract, lambda: [toggled_clip_layout(config, model, mesh, abstract, shardings)])
  if start_step is not None and start_step >= config.train.num_steps:
    logging.info('%s already holds the checkpoint of step %d >= config.train.num_steps=%d; nothing to train '
                 '(raise --config.train.num_steps to continue)', store.directory, start_step,
                 config.train.num_steps)
    store.close()
    return state
  if state is None:
    state, start_step = create_state(config, model, tx, mesh), 0
    logging.info('starting from scratch: %s with %.2fM parameters on a %s mesh', config.model.name,
                 count_params(state.params) / 1e6, dict(mesh.shape))
  else:
    logging.info('resumed from the checkpoint of step %d in %s', start_step, store.directory)
    state = restart_nonfinite_record(state, config)
  if is_main:
    write_config(config, workdir)

  step_fn = make_train_step(config, model, tx, mesh, shardings, stacked=True)
  generate_fn = make_generate_fn(config, model, mesh, classifier)
  batcher = StepBatcher(source, config.train.batch_size, config.seed, config.data.random_flip,
                        jax.process_index(), jax.process_count(), config.data.random_crop)
  writer = create_writer(workdir, is_main)
  profile = ProfileWindow(config.train.profile_steps, os.path.join(workdir, 'tensorboard'))
  held_out = HeldOutLoss(config, model, mesh, val_source) if val_source is not None else None
  sigma_rels, snapshot_every = ema_lib.power_ema_sigma_rels(config), config.train.ema_snapshot_every
  snapshots = ema_lib.snapshot_store(workdir) if sigma_rels else None
  num_steps = config.train.num_steps
  pending, last_log, last_log_step, last_saved = [], time.time(), start_step, start_step
  from tqdm import tqdm
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
    with PreemptionFlag() as preemption:
      # Chunks end on multiples of steps_per_call, which divides every period below (validate_config), so
      # logs, grids, evaluations and checkpoints fall on chunk ends; a resume off that grid first runs a short chunk.
      for start, done, host_batches in prefetch_batches(batcher, start_step, num_steps, config.train.steps_per_call,
                                                        config.data.prefetch):
        batches = sharding_lib.host_batch_to_global(host_batches, mesh, stacked=True)
        state, metrics = step_fn(state, batches)
        pending.append(metrics)
        profile.after_call(done, state.step)
        bar.update(done - start)
        if done % config.train.log_every == 0 or done == num_steps:
          summary = {k: float(np.mean(v)) for k, v in jax.device_get(jax.tree.map(
              lambda *xs: jnp.concatenate(xs), *pending)).items()}
          now = time.time()
          summary['steps_per_second'] = (done - last_log_step) / (now - last_log)
          summary['nonfinite_updates'] = int(state.nonfinite_count)
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
          logging.warning('stopped at step %d after a signal; checkpoint saved, rerun the same command to resume',
                          done)
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
        run_evaluators(config, {k: v for k, v in evaluators.items()
                                if not (v[1].get('every_steps', 0) and final_step % v[1].every_steps == 0)},
                       final_step, generate_fn, state.ema_params, mesh, writer, workdir, final=True)
      return state
  finally:
    profile.stop()
    bar.close()
    writer.flush()
    writer.close()
    store.close()
    if snapshots:
      snapshots.close()

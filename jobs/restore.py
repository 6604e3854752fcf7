"""Building a model and restoring it: the setup training starts from, and what sampling, evaluation, editing and
sweeps restore (the parameters and EMA of the newest checkpoint, or a post-hoc EMA)."""
import os

import jax

from input_pipeline.files import atomic_write
from models import build_model
from models.text_encoder import frozen_parameter_groups
from training import ema as ema_lib
from training import sharding as sharding_lib
from training.checkpoints import TRAINING_ONLY_FIELDS, CheckpointStore, model_signature
from training.state import create_optimizer, state_shardings


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
    leaves = [
        jax.device_put(x, s) for x, s in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(shardings.opt_state))
    ]
    return state.replace(opt_state=jax.tree.unflatten(treedef, leaves))

  was = 'off' if config.optim.grad_clip > 0 else 'on'
  return other, convert, f'a run with gradient clipping {was} (optim.grad_clip); its optimizer state carries over'


def write_config(config, workdir):
  """<workdir>/config.json: the run's config, which a guided sampler reads back (jobs/guided.load_classifier)."""
  with atomic_write(os.path.join(workdir, 'config.json')) as tmp, open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def restore_for_inference(config, workdir, use_ema=True, step=0):
  """(model, params, step, mesh) from the newest checkpoint in workdir (step > 0: that step's), for sampling and
  evaluation: its EMA, or with use_ema=False its params; with config.sample.ema_sigma_rel > 0 the power-function
  EMA of that width rebuilt from the run's snapshots (training/ema.py), and step is the snapshot step."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'no checkpoints in {workdir}/checkpoints; train first with --mode=train '
                            f'--workdir={workdir}')
  model, tx, mesh, abstract, shardings, store = setup(config, workdir, training=False)
  try:
    if use_ema and config.sample.ema_sigma_rel:
      params, step = ema_lib.reconstruct(config, workdir, abstract.params, mesh)
      return model, params, step, mesh
    field = 'ema_params' if use_ema else 'params'  # read alone: not the optimizer state, nor the other copy
    weights, step = store.restore_weights({field: getattr(abstract, field)}, step or None)
  finally:
    store.close()
  if weights is None:
    raise FileNotFoundError(f'{workdir}/checkpoints holds no checkpoint; train first with --mode=train')
  return model, weights[field], step, mesh

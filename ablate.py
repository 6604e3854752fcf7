"""Ablation sweeps: expand a sweep file into runs, run them one after another, collect tables and plots.

  python ablate.py --sweep=configs/ablations/dit_grid.py --root=runs/ablations
  python ablate.py --sweep=configs/ablations/dit_grid.py --print_commands   # one command per run, for a cluster
  python ablate.py --sweep=configs/ablations/dit_grid.py --collect_only     # tables and plots of what is done
  python ablate.py --sweep=configs/ablations/guidance.py --model_workdir=runs/quickstart

A sweep file (configs/ablations/*.py) has `get_sweep()` returning a dict:
  kind:     'train' (each run trains its config with train.train_and_evaluate and reads its final
            eval/* metrics from metrics.jsonl) or 'sample' (each run samples one trained model,
            `model_workdir`, with its config.sample and scores the samples with config.evals);
  base:     the ConfigDict every run starts from (an existing config file's get_config() + changes);
  axes:     {axis: [{'name': label, 'field.path': value, ...}, ...]} or {axis: {'field.path': [values]}};
            the runs are the product of the axes, named after their settings: 'size=S,patch=4';
  metrics:  result fields every run must produce (a run missing one fails and is not marked finished);
  columns:  result fields shown in results.md after the axes (default: metrics);
  plots:    [{'x': field or axis, 'y': field or [fields], 'series': axis, 'annotate': axis, 'logx': bool,
             'logy': bool}];
  curves:   'train' sweeps: [{'y': eval metric, 'series': axis, 'over': axis to average (the seed), 'reference':
            a label of series, 'lower_is_better': bool, 'logy': bool}]: the metric against the training step
            (curves_<y>.png) and a table of it with the step each series first reaches the reference's final
            value (curves_<y>.md);
  exclude:  [{axis: label, ...}] settings to leave out of the product (optional);
  model_workdir, model_command: 'sample' sweeps: the trained model, and the command that trains it;
  model_sweep: 'sample' sweeps of every model of a 'train' sweep file instead: that sweep's axes come
            first (and its excludes apply), each run samples <root>/<model sweep>/<its run> (trained first
            where unfinished).

Run i lives in <root>/<sweep>/<run name>/ and is finished when its result.json exists (written
atomically, last); rerunning the same command skips finished runs and resumes interrupted training
from its checkpoints. Then <root>/<sweep>/results.csv, results.md and *.png are written from every
finished run. Gflops are forward multiply-adds per image (the DiT paper's convention): counted
analytically for DiT, XLA's cost analysis of the forward (flops / 2) otherwise (`xla_gflops`).
"""
import json
import logging
import os
import shlex
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from evaluation import create_evaluator
from input_pipeline.files import write_png
from input_pipeline.images import image_grid
from jobs import train
from jobs.restore import restore_for_inference
from jobs.sample import generate_samples, make_generate_fn
from jobs.sweep_report import collect_and_report
from jobs.sweeps import RESULT_FILE, expand, is_finished, load_sweep, run_dir, write_json_atomic
from models import build_model
from models.shapes import dummy_inputs
from training.writers import JsonlWriter

flags.DEFINE_string('sweep', None, 'Sweep file, e.g. configs/ablations/dit_grid.py.')
flags.DEFINE_string('root', 'runs/ablations', 'Runs go to <root>/<sweep>/<run>, tables and plots to <root>/<sweep>/.')
flags.DEFINE_multi_string(
    'only', [], 'Run only this run (its name, e.g. size=S,patch=4); repeatable. '
    'Nothing is collected then.')
flags.DEFINE_multi_string(
    'set', [], 'FIELD=VALUE: override a field of the base config of every run (and of the '
    'model a sampling sweep trains), e.g. --set=train.num_steps=200; repeatable.')
flags.DEFINE_string(
    'model_workdir', None, "'sample' sweeps: the trained model's workdir (default: the sweep's "
    'model_workdir); trained with the base config first if it holds no finished checkpoint.')
flags.DEFINE_bool('print_commands', False, 'Print one launch command per run instead of running.')
flags.DEFINE_bool('collect_only', False, 'Only collect results.csv, results.md and plots of finished runs.')
flags.DEFINE_string('copy_to', None, 'Also copy results.md and the plots to this folder as <sweep>_<file>.')

# ---------------------------------------------------------------- cost of a model


def dit_gmacs(config):
  """Forward multiply-adds per image of a DiT, in billions, counted as the DiT paper's Table 4
  (matrix multiplies only: patch embedding, qkv/projection/MLP, attention scores and values,
  adaLN modulation, timestep MLP, final layer)."""
  m, d = config.model, config.data
  h, p, depth = m.hidden_size, m.patch_size, m.depth
  tokens = (d.image_size // p)**2
  mlp = int(h * m.get('mlp_ratio', 4.0))
  block = tokens * (4 * h * h + 2 * h * mlp) + 2 * tokens * tokens * h + 6 * h * h
  embed = tokens * p * p * d.channels * h + 256 * h + h * h
  final = tokens * h * p * p * d.channels + 2 * h * h
  return (depth * block + embed + final) / 1e9


def model_cost(config):
  """{'params_m', 'gflops' (paper convention), 'xla_gflops' (XLA cost analysis / 2)} of one forward."""
  model = build_model(config)
  x, t, cond = dummy_inputs(config, 1)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **cond))['params']
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  analysis = jax.jit(lambda p: model.apply({'params': p}, x, t, **cond)).lower(params).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  xla = float(analysis['flops']) / 2e9
  gflops = dit_gmacs(config) if config.model.name == 'dit' and config.model.get('text') is None else xla
  return {'params_m': num_params / 1e6, 'gflops': gflops, 'xla_gflops': xla}


def network_evaluations(sample_config, objective):
  """Network calls per sample (one guided call runs the conditional and null batch together)."""
  del objective
  n = sample_config.num_steps
  return 2 * n - 1 if sample_config.sampler == 'heun' else n


# ---------------------------------------------------------------- running


def final_metrics(workdir):
  """The last value of every scalar in <workdir>/metrics.jsonl ('eval/' dropped from names), plus the
  median steps_per_second of all logged windows but the first (compilation)."""
  out, speeds = {}, []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      for key, value in record.items():
        out[key[len('eval/'):] if key.startswith('eval/') else key] = value
      if 'steps_per_second' in record:
        speeds.append(record['steps_per_second'])
  if speeds:
    out['steps_per_second'] = statistics.median(speeds[1:] or speeds)
  return out


def evaluated_steps(workdir):
  steps = set()
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if any(key.startswith('eval/') for key in record):
        steps.add(record['step'])
  return steps


def evaluate_checkpoint(config, workdir):
  """Runs config.evals on the newest checkpoint, appending to metrics.jsonl (as training would have)."""
  model, params, step, mesh = restore_for_inference(config, workdir)
  evaluators = {name: (create_evaluator(name, config, ev), ev) for name, ev in config.evals.items()}
  train.run_evaluators(config, evaluators, step, make_generate_fn(config, model, mesh), params, mesh,
                       JsonlWriter(os.path.join(workdir, 'metrics.jsonl')), workdir, final=True)


def train_run(run, workdir, cache):
  """Trains (or resumes) the run's config in workdir; returns its final metrics."""
  del cache
  workdir, config, t0 = os.path.abspath(workdir), run.config, time.time()
  train.train_and_evaluate(config, workdir)
  step = final_metrics(workdir).get('step', 0)
  if step < config.train.num_steps:  # e.g. stopped by SIGTERM/SIGINT after saving a checkpoint
    raise RuntimeError(f'run {run.name} stopped at step {step} of {config.train.num_steps}; rerun to resume')
  if config.evals and step not in evaluated_steps(workdir):
    logging.info('%s: the final checkpoint has no evaluation (interrupted?); evaluating it now', run.name)
    evaluate_checkpoint(config, workdir)
  metrics = final_metrics(workdir)
  metrics['train_seconds'] = time.time() - t0
  return metrics


def ensure_models(sweep, root, runs, model_workdir):
  """Trains the model(s) the runs sample unless finished: the sweep's model_workdir with its base
  config, or the runs of its model_sweep."""
  if sweep.model_sweep is not None:
    run_sweep(sweep.model_sweep, root, only=sorted({r.model_run for r in runs}))
    return
  logging.info('the model: %s (trained with the base config if not finished)', model_workdir)
  train.train_and_evaluate(sweep.base, os.path.abspath(model_workdir))


def model_workdir_of(sweep, root, run, default):
  return os.path.join(root, sweep.model_sweep.name, run.model_run) if sweep.model_sweep else default


def sample_run(run, workdir, cache):
  """Samples the cached model with the run's config.sample; scores with its config.evals."""
  config = run.config
  model_workdir = os.path.abspath(cache['model_workdirs'][run.name])
  # Runs may sample other weights of the model: params, EMA, or a post-hoc EMA of another width or step (training/ema.py).
  weights = ('model', model_workdir, config.sample.use_ema, config.sample.ema_sigma_rel, config.sample.ema_step)
  if weights not in cache:
    cache.pop(cache.pop('last_model', None), None)  # keep one model in memory
    cache[weights] = restore_for_inference(config, model_workdir, use_ema=config.sample.use_ema)
    cache['last_model'] = weights
  model, params, step, mesh = cache[weights]
  # The guidance scales and the weights are arguments: runs that differ only in them share one compilation.
  traced = ('guidance_scale', 'autoguidance_scale', 'use_ema', 'ema_sigma_rel', 'ema_step')
  key = model_workdir + json.dumps({k: v for k, v in config.sample.to_dict().items() if k not in traced},
                                   sort_keys=True, default=str)
  if key not in cache:
    cache[key] = make_generate_fn(config, model, mesh)
  t0 = time.time()
  images, cond = generate_samples(config, cache[key], params, mesh, config.sample.num_samples, config.sample.seed,
                                  autoguidance_scale=config.sample.autoguidance_scale)
  metrics = {
      'model_step': step, 'sampling_seconds': time.time() - t0, 'num_samples': len(images),
      'nfe': network_evaluations(config.sample, config.diffusion.objective)
  }
  for name, ev in config.evals.items():
    metrics.update(create_evaluator(name, config, ev)(images, cond))
  if jax.process_index() == 0:
    write_png(os.path.join(workdir, 'samples.png'), image_grid(np.asarray(images[:100])))
  return metrics


RUNNERS = {'train': train_run, 'sample': sample_run}


def run_sweep(sweep, root, only=(), runner=None, model_workdir=None, cost=None):
  """Runs every unfinished run (or those named in `only`) in order; returns the names it ran.

  runner(run, workdir, cache) -> metrics and cost(config) -> metrics default to the sweep kind's runner
  and model_cost (tests pass stubs).
  """
  runs = expand(sweep)
  unknown = set(only) - {r.name for r in runs}
  if unknown:
    raise ValueError(f'--only names no run of {sweep.name}: {sorted(unknown)}; the runs are '
                     f'{", ".join(r.name for r in runs)}')
  runner = runner or RUNNERS[sweep.kind]
  cost = cost or model_cost
  model_workdir = model_workdir or sweep.model_workdir
  cache = {'model_workdirs': {r.name: model_workdir_of(sweep, root, r, model_workdir) for r in runs}}
  todo = [r for r in runs if (not only or r.name in only) and not is_finished(root, sweep, r)]
  logging.info('%s: %d runs, %d finished, %d to run', sweep.name, len(runs), len(runs) - len(todo), len(todo))
  if todo and sweep.kind == 'sample' and runner is sample_run:
    ensure_models(sweep, root, todo, model_workdir)
  costs = {}
  for i, run in enumerate(todo):
    workdir = run_dir(root, sweep, run)
    os.makedirs(workdir, exist_ok=True)
    logging.info('[%d/%d] %s/%s', i + 1, len(todo), sweep.name, run.name)
    t0 = time.time()
    metrics = dict(runner(run, workdir, cache))
    model_key = json.dumps(run.config.model.to_dict(), sort_keys=True, default=str) + str(run.config.data.image_size)
    if model_key not in costs:
      costs[model_key] = cost(run.config)
    metrics.update(costs[model_key])
    missing = [m for m in sweep.metrics if m not in metrics]
    if missing:
      raise RuntimeError(f'run {run.name} finished without {missing} (see its log); not marking it finished')
    metrics['run_seconds'] = time.time() - t0
    write_json_atomic(
        os.path.join(workdir, RESULT_FILE), {
            'sweep': sweep.name, 'run': run.name, 'settings': run.settings, 'values': run.values,
            'overrides': run.overrides, 'metrics': metrics, 'finished': time.strftime('%Y-%m-%d %H:%M:%S')
        })
  return [r.name for r in todo]


def launch_commands(sweep, root, set_overrides=(), model_workdir=None):
  """One shell command per run (each runs just that run and skips it if finished), then the collect
  command; lines starting with '#' are comments."""
  base = ['python', 'ablate.py', f'--sweep={sweep.path}', f'--root={root}']
  base += [f'--set={s}' for s in set_overrides]
  lines = []
  if sweep.model_sweep is not None:
    lines.append('# first, the models: python ablate.py ' + ' '.join(
        shlex.quote(a) for a in [f'--sweep={sweep.model_sweep.path}', f'--root={root}'] +
        [f'--set={s}' for s in set_overrides] + ['--print_commands']))
  elif sweep.kind == 'sample':
    workdir = model_workdir or sweep.model_workdir
    base.append(f'--model_workdir={workdir}')
    lines.append(f'# first, once: {sweep.model_command or "train the model"} --workdir={workdir}')
  for run in expand(sweep):
    lines.append(' '.join(shlex.quote(a) for a in base + [f'--only={run.name}']))
  lines.append('# then: ' + ' '.join(shlex.quote(a) for a in base + ['--collect_only']))
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  flags_ = flags.FLAGS
  if not flags_.sweep:
    raise app.UsageError('--sweep is required, e.g. --sweep=configs/ablations/dit_grid.py')
  logging.getLogger().setLevel(logging.INFO)
  sweep = load_sweep(flags_.sweep, flags_.set)
  if flags_.print_commands:
    print('\n'.join(launch_commands(sweep, flags_.root, flags_.set, flags_.model_workdir)))
    return
  if not flags_.collect_only:
    run_sweep(sweep, flags_.root, flags_.only, model_workdir=flags_.model_workdir)
  if not flags_.only:
    collect_and_report(sweep, flags_.root, flags_.copy_to)


if __name__ == '__main__':
  app.run(main)

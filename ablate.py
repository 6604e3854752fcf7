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
import csv
import dataclasses
import importlib.util
import itertools
import json
import logging
import os
import re
import shlex
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from configs.validate import validate_config
from evaluation import create_evaluator
from input_pipeline.files import write_png
from input_pipeline.images import image_grid
from jobs import train
from jobs.restore import restore_for_inference
from jobs.sample import generate_samples, make_generate_fn
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

RESULT_FILE = 'result.json'
_SAFE = re.compile(r'[^A-Za-z0-9._+-]')


@dataclasses.dataclass
class Run:
  name: str  # 'size=S,patch=4': the workdir's name
  settings: dict  # axis -> label (str)
  values: dict  # axis -> the raw value of a scalar axis, the label of a named one
  overrides: dict  # config field -> value
  config: object  # the run's ConfigDict
  model_run: str = ''  # sweeps with a model_sweep: the name of the run that trained this run's model


@dataclasses.dataclass
class Sweep:
  name: str
  path: str
  kind: str
  base: object
  axes: list  # [(axis, [(label, value, overrides), ...]), ...]
  metrics: list
  columns: list
  plots: list
  exclude: list
  model_workdir: str = ''
  model_command: str = ''
  model_sweep: object = None  # the 'train' Sweep whose models a 'sample' sweep samples


# ---------------------------------------------------------------- sweep files and their expansion


def label_of(value):
  """A value as it appears in a run name: 4 -> '4', 1.5 -> '1.5', True -> 'true', 'dpm++2m' as is."""
  if isinstance(value, bool):
    text = 'true' if value else 'false'
  elif isinstance(value, float):
    text = f'{value:g}'
  else:
    text = str(value)
  return _SAFE.sub('_', text)


def _normalize_axis(axis, spec):
  """[(label, value, overrides)] of one axis; see the module docstring for the two spellings."""
  if isinstance(spec, dict):
    if len(spec) != 1:
      raise ValueError(f"axis {axis!r}: a dict axis names exactly one field, e.g. {{'model.patch_size': [2, 4]}}")
    (field, values), = spec.items()
    return [(label_of(v), v, {field: v}) for v in values]
  points = []
  for point in spec:
    if not isinstance(point, dict) or 'name' not in point:
      raise ValueError(f"axis {axis!r}: each value is {{'name': ..., 'field.path': value, ...}}; got {point!r}")
    overrides = {k: v for k, v in point.items() if k != 'name'}
    points.append((label_of(point['name']), point['name'], overrides))
  labels = [p[0] for p in points]
  if len(set(labels)) != len(labels):
    raise ValueError(f'axis {axis!r} has repeated names: {labels}')
  return points


def load_sweep(path, set_overrides=()):
  """The Sweep of a sweep file, with the FIELD=VALUE strings of --set applied to its base config."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'sweep_{name}', path)
  if spec is None:
    raise FileNotFoundError(f'no sweep file {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  d = dict(module.get_sweep())
  kind = d.get('kind', 'train')
  if kind not in ('train', 'sample'):
    raise ValueError(f"{path}: kind must be 'train' or 'sample', got {kind!r}")
  base = d['base']
  for item in set_overrides:
    field, sep, text = item.partition('=')
    if not sep:
      raise ValueError(f'--set={item!r}: expected FIELD=VALUE')
    set_field(base, field, parse_value(get_field(base, field), text))
  metrics = list(d.get('metrics', []))
  axes = [(axis, _normalize_axis(axis, s)) for axis, s in d['axes'].items()]
  model_sweep = None
  if d.get('model_sweep'):
    if kind != 'sample':
      raise ValueError(f"{path}: model_sweep is for kind='sample' sweeps")
    model_path = d['model_sweep']
    if not os.path.exists(model_path):  # relative to the repository rather than the working directory
      model_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), model_path)
    model_sweep = load_sweep(model_path, set_overrides)
    model_sweep.path = d['model_sweep']
    axes = model_sweep.axes + axes
  exclude = list(d.get('exclude', [])) + (model_sweep.exclude if model_sweep else [])  # no model, no samples
  return Sweep(name=d.get('name', name), path=path, kind=kind, base=base, axes=axes, metrics=metrics,
               columns=list(d.get('columns', metrics)), plots=list(d.get('plots', [])), exclude=exclude,
               model_workdir=d.get('model_workdir', ''), model_command=d.get('model_command',
                                                                             ''), model_sweep=model_sweep)


def get_field(config, field):
  node = config
  for key in field.split('.'):
    if key not in node:
      raise KeyError(f'config has no field {field!r} ({key!r} is missing)')
    node = node[key]
  return node


def set_field(config, field, value):
  *parents, last = field.split('.')
  node = get_field(config, '.'.join(parents)) if parents else config
  if last not in node:
    raise KeyError(f'config has no field {field!r}; a sweep changes existing fields only')
  node[last] = value


def parse_value(current, text):
  """--set text -> a value of the type of the field it replaces."""
  import ast
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'expected true or false, got {text!r}')
    return text.lower() in ('true', '1')
  if isinstance(current, (int, float)):
    return type(current)(ast.literal_eval(text)) if isinstance(current, float) else int(text)
  if isinstance(current, str):
    return text
  return ast.literal_eval(text)


def expand(sweep):
  """Every run of the sweep, in product order (the first axis varies slowest), configs validated."""
  runs = []
  for combo in itertools.product(*[points for _, points in sweep.axes]):
    settings = {axis: label for (axis, _), (label, _, _) in zip(sweep.axes, combo)}
    if any(all(settings.get(k) == label_of(v) for k, v in ex.items()) for ex in sweep.exclude):
      continue
    config = sweep.base.copy_and_resolve_references()
    overrides = {}
    for _, _, point_overrides in combo:
      overrides.update(point_overrides)
    for field, value in overrides.items():
      set_field(config, field, value)
    name = ','.join(f'{axis}={label}' for axis, label in settings.items())
    try:
      validate_config(config)
    except ValueError as e:
      raise ValueError(f'{sweep.path}: run {name}: {e}') from e
    model_axes = [axis for axis, _ in sweep.model_sweep.axes] if sweep.model_sweep else []
    runs.append(
        Run(name=name, settings=settings, overrides=overrides, config=config,
            values={axis: value for (axis, _), (_, value, _) in zip(sweep.axes, combo)},
            model_run=','.join(f'{axis}={settings[axis]}' for axis in model_axes)))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f'{sweep.path}: two runs have the same name')
  return runs


def run_dir(root, sweep, run):
  return os.path.join(root, sweep.name, run.name)


def is_finished(root, sweep, run):
  return os.path.exists(os.path.join(run_dir(root, sweep, run), RESULT_FILE))


def write_json_atomic(path, obj):
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


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
  # The guidance scale and the weights are arguments: runs that differ only in them share one compilation.
  traced = ('guidance_scale', 'use_ema', 'ema_sigma_rel', 'ema_step')
  key = model_workdir + json.dumps({k: v for k, v in config.sample.to_dict().items() if k not in traced},
                                   sort_keys=True, default=str)
  if key not in cache:
    cache[key] = make_generate_fn(config, model, mesh)
  t0 = time.time()
  images, cond = generate_samples(config, cache[key], params, mesh, config.sample.num_samples, config.sample.seed)
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


# ---------------------------------------------------------------- tables and plots


def collect(sweep, root):
  """(rows, finished count): one row per run in expansion order; runs without result.json have only
  their settings."""
  rows, done = [], 0
  for run in expand(sweep):
    row = {'run': run.name, **run.settings}
    path = os.path.join(run_dir(root, sweep, run), RESULT_FILE)
    if os.path.exists(path):
      with open(path) as f:
        row.update(json.load(f)['metrics'])
      done += 1
    row['_values'] = run.values
    rows.append(row)
  return rows, done


def format_cell(value):
  if isinstance(value, float):
    if value == 0 or 1e-3 <= abs(value) < 1e5:
      return f'{value:.4g}'
    return f'{value:.3e}'
  return '' if value is None else str(value)


def write_tables(sweep, rows, done, out_dir):
  axes = [axis for axis, _ in sweep.axes]
  fields = []
  for row in rows:
    for key in row:
      if key not in fields and key not in axes and key not in ('run', '_values'):
        fields.append(key)
  csv_path = os.path.join(out_dir, 'results.csv')
  with open(csv_path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, ['run'] + axes + fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: v for k, v in row.items() if k != '_values'})
  os.replace(csv_path + '.tmp', csv_path)
  columns = axes + [c for c in sweep.columns if c not in axes]
  lines = [
      f'Sweep `{sweep.name}` ({sweep.path}): {done} of {len(rows)} runs finished.', '',
      '| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' if c in axes else '---:' for c in columns) + '|'
  ]
  for row in rows:
    lines.append('| ' + ' | '.join(format_cell(row.get(c)) for c in columns) + ' |')
  md_path = os.path.join(out_dir, 'results.md')
  with open(md_path + '.tmp', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(md_path + '.tmp', md_path)
  return csv_path, md_path


def _plot_value(row, key):
  value = row['_values'].get(key, row.get(key))
  return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def write_plots(sweep, rows, out_dir):
  """One PNG per plot spec, one panel per y field, one line per value of the series axis."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  paths = []
  for spec in sweep.plots:
    ys = [spec['y']] if isinstance(spec['y'], str) else list(spec['y'])
    x, series, annotate = spec['x'], spec.get('series'), spec.get('annotate')
    fig, panels = plt.subplots(1, len(ys), figsize=(4.8 * len(ys), 3.8), squeeze=False)
    plotted = False
    for ax, y in zip(panels[0], ys):
      groups = {}
      for row in rows:
        if _plot_value(row, x) is not None and _plot_value(row, y) is not None:
          groups.setdefault(row.get(series, '') if series else '', []).append(row)
      for label, group in groups.items():
        group = sorted(group, key=lambda r: _plot_value(r, x))
        xs, vals = [_plot_value(r, x) for r in group], [_plot_value(r, y) for r in group]
        ax.plot(xs, vals, 'o-', label=f'{series}={label}' if series else None)
        plotted = True
        for r, xv, yv in zip(group, xs, vals):
          if annotate:
            ax.annotate(f'{annotate}={r[annotate]}', (xv, yv), textcoords='offset points', xytext=(4, 4), fontsize=7)
      ax.set_xlabel(spec.get('xlabel', x))
      ax.set_ylabel(y)
      if spec.get('logx'):
        ax.set_xscale('log')
        ticks = sorted({_plot_value(r, x) for g in groups.values() for r in g})
        if len(ticks) <= 8 and all(float(t).is_integer() for t in ticks):  # step counts: label the values
          ax.set_xticks(ticks, [f'{t:g}' for t in ticks])
          ax.minorticks_off()
      if spec.get('logy'):
        ax.set_yscale('log')
      ax.grid(alpha=0.3)
      if series and groups:
        ax.legend(fontsize=8)
    fig.suptitle(spec.get('title', f'{sweep.name}: {", ".join(ys)} vs {x}'), fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, spec.get('file', f'{"_".join(ys)}_vs_{x}.png'))
    if plotted:
      fig.savefig(path, dpi=90)
      paths.append(path)
    plt.close(fig)
  return paths


def collect_and_report(sweep, root, copy_to=None):
  out_dir = os.path.join(root, sweep.name)
  os.makedirs(out_dir, exist_ok=True)
  rows, done = collect(sweep, root)
  paths = list(write_tables(sweep, rows, done, out_dir)) + write_plots(sweep, rows, out_dir)
  if copy_to:
    import shutil
    os.makedirs(copy_to, exist_ok=True)
    for path in paths[1:]:  # results.md and the plots
      shutil.copyfile(path, os.path.join(copy_to, f'{sweep.name}_{os.path.basename(path)}'))
  logging.info('%d of %d runs finished; wrote %s', done, len(rows), ', '.join(paths))
  return paths


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

"""Sweep files and their expansion into runs: the format is described in ablate.py, which runs them.

A sweep's runs are the product of its axes (less its excludes); each run is a validated config named after its
settings ('size=S,patch=4') and lives in <root>/<sweep>/<run name>/, finished once its result.json exists.
"""
import dataclasses
import importlib.util
import itertools
import json
import os
import re

from configs.validate import validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  curves: list  # [{'y': metric, 'series': axis, 'over': axis, 'reference': label, ...}]: jobs/sweep_report.py
  exclude: list
  model_workdir: str = ''
  model_command: str = ''
  model_sweep: object = None  # the 'train' Sweep whose models a 'sample' sweep samples


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
      model_path = os.path.join(REPO, model_path)
    model_sweep = load_sweep(model_path, set_overrides)
    model_sweep.path = d['model_sweep']
    axes = model_sweep.axes + axes
  exclude = list(d.get('exclude', [])) + (model_sweep.exclude if model_sweep else [])  # no model, no samples
  return Sweep(name=d.get('name', name), path=path, kind=kind, base=base, axes=axes, metrics=metrics,
               columns=list(d.get('columns', metrics)), plots=list(d.get('plots', [])),
               curves=list(d.get('curves', [])), exclude=exclude, model_workdir=d.get('model_workdir', ''),
               model_command=d.get('model_command', ''), model_sweep=model_sweep)


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

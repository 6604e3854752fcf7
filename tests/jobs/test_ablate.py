"""The ablation runner: sweep expansion and names, resuming a half-finished sweep, tables, launch commands."""
import csv
import json
import os
import subprocess
import sys

import pytest

import ablate
from jobs import sweep_report, sweeps, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_SWEEP = '''
import ml_collections
from tests.tiny import tiny_unet_config


def get_sweep():
  c = tiny_unet_config()
  c.evals.digits = ml_collections.ConfigDict({'every_steps': 0, 'num_samples': 16, 'seed': 3})
  c.sample.num_samples = 16
  return {
      'kind': %(kind)r,
      'base': c,
      'axes': %(axes)s,
      'exclude': %(exclude)s,
      'model_workdir': %(model_workdir)r,
      'metrics': ['digits_fd', 'digits_accuracy'],
      'columns': ['gflops', 'digits_fd', 'digits_accuracy'],
      'plots': [{'x': %(x)r, 'y': ['digits_fd', 'digits_accuracy'], 'series': %(series)r}],
  }
'''

GRID_AXES = """{'width': [{'name': 'narrow', 'model.base_channels': 8}, {'name': 'wide', 'model.base_channels': 16}],
                 'lr': {'optim.learning_rate': [1e-3, 2e-3]}}"""


def write_sweep(tmp_path, name='tiny', kind='train', axes=GRID_AXES, exclude='[]', model_workdir='', x='lr',
                series='width'):
  path = tmp_path / f'{name}.py'
  path.write_text(TINY_SWEEP %
                  dict(kind=kind, axes=axes, exclude=exclude, model_workdir=model_workdir, x=x, series=series))
  return str(path)


def test_expansion_names_and_overrides(tmp_path):
  sweep = ablate.load_sweep(write_sweep(tmp_path), ['train.num_steps=3', 'data.random_flip=true'])
  runs = ablate.expand(sweep)
  assert [r.name for r in runs
         ] == ['width=narrow,lr=0.001', 'width=narrow,lr=0.002', 'width=wide,lr=0.001', 'width=wide,lr=0.002']
  assert [r.config.model.base_channels for r in runs] == [8, 8, 16, 16]
  assert [r.config.optim.learning_rate for r in runs] == [1e-3, 2e-3, 1e-3, 2e-3]
  assert all(r.config.train.num_steps == 3 and r.config.data.random_flip for r in runs)  # --set reaches every run
  assert sweep.base.model.base_channels == 8 and runs[2].settings == {'width': 'wide', 'lr': '0.001'}
  assert runs[3].values == {'width': 'wide', 'lr': 2e-3}
  assert ablate.run_dir('runs/ablations', sweep, runs[1]) == os.path.join('runs/ablations', 'tiny',
                                                                          'width=narrow,lr=0.002')
  excluded = ablate.expand(ablate.load_sweep(write_sweep(tmp_path, exclude="[{'width': 'wide', 'lr': 0.002}]")))
  assert [r.name for r in excluded] == [r.name for r in runs[:3]]
  assert [sweeps.label_of(v) for v in (4, 1.5, 0.0, True, 'dpm++2m', 'a b/c')
         ] == ['4', '1.5', '0', 'true', 'dpm++2m', 'a_b_c']


def test_bad_sweeps_fail_before_running(tmp_path):
  with pytest.raises(KeyError, match='model.base_chanels'):
    ablate.expand(ablate.load_sweep(write_sweep(tmp_path, axes="{'w': {'model.base_chanels': [8]}}")))
  with pytest.raises(ValueError, match='run s=nope.*sample.sampler'):
    ablate.expand(ablate.load_sweep(write_sweep(tmp_path, axes="{'s': {'sample.sampler': ['nope']}}")))
  with pytest.raises(KeyError, match='train.num_step'):
    ablate.load_sweep(write_sweep(tmp_path), ['train.num_step=3'])
  sweep = ablate.load_sweep(write_sweep(tmp_path))
  with pytest.raises(ValueError, match='names no run'):
    ablate.run_sweep(sweep, str(tmp_path / 'runs'), only=['width=huge,lr=1'], runner=lambda *a: {})


def test_repository_sweeps_expand():
  grid = ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/dit_grid.py'))
  runs = ablate.expand(grid)
  assert len(runs) == 12 and 'size=XL,patch=2' in [r.name for r in runs]
  assert {r.config.train.num_steps for r in runs} == {grid.base.train.num_steps}  # equal steps for all
  imagenet = ablate.expand(ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/dit_grid_imagenet.py')))
  assert len(imagenet) == 12
  # Forward Gflops (multiply-adds) at 256x256 from the DiT paper, Table 4.
  table = {'S': (6.06, 1.41, 0.36), 'B': (23.01, 5.56, 1.42), 'L': (80.71, 19.70, 5.01), 'XL': (118.64, 29.05, 7.39)}
  for run in imagenet:
    paper = table[run.settings['size']][(2, 4, 8).index(run.config.model.patch_size)]
    assert ablate.dit_gmacs(run.config) == pytest.approx(paper, rel=0.006, abs=0.005), run.name
  assert len(ablate.expand(ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/sampler_steps.py')))) == 15
  assert len(ablate.expand(ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/guidance.py')))) == 8
  unguided = ablate.expand(ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/schedule_objective_unguided.py')))
  assert len(unguided) == 5 and 'schedule=cosine,objective=flow,guidance=1' not in [r.name for r in unguided]
  full = ablate.expand(ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/sampler_steps_imagenet.py')))
  assert len(full) == 25 and {r.config.evals.inception.num_samples for r in full} == {10_000}
  assert len(ablate.expand(ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/schedule_objective.py')))) == 5
  guided = ablate.load_sweep(os.path.join(ROOT, 'configs/ablations/dit_grid_guided.py'))
  runs = ablate.expand(guided)
  assert [r.name for r in runs][:2] == ['size=S,patch=8,guidance=2', 'size=S,patch=4,guidance=2']
  assert runs[1].model_run == 'size=S,patch=4' and runs[1].config.model.patch_size == 4
  assert ablate.model_workdir_of(guided, 'r', runs[1], None) == os.path.join('r', 'dit_grid', 'size=S,patch=4')
  assert ablate.launch_commands(guided, 'r')[0] == ('# first, the models: python ablate.py '
                                                    '--sweep=configs/ablations/dit_grid.py --root=r --print_commands')


def fake_cost(config):
  return {'params_m': 0.1, 'gflops': 0.01 * config.model.base_channels, 'xla_gflops': 0.0}


def test_resume_skips_finished_runs_and_collects(tmp_path):
  sweep = ablate.load_sweep(write_sweep(tmp_path))
  root = str(tmp_path / 'runs')
  calls = []

  def runner(run, workdir, cache):
    calls.append(run.name)
    assert os.path.isdir(workdir) and run.name in cache['model_workdirs']
    return {'digits_fd': run.config.optim.learning_rate * 1000, 'digits_accuracy': 0.5, 'loss': 0.1}

  first = ablate.run_sweep(sweep, root, only=['width=narrow,lr=0.002', 'width=wide,lr=0.001'], runner=runner,
                           cost=fake_cost)
  assert first == calls == ['width=narrow,lr=0.002', 'width=wide,lr=0.001']
  finished = os.path.join(root, 'tiny', 'width=narrow,lr=0.002', 'result.json')
  os.utime(finished, (1_000_000, 1_000_000))
  os.makedirs(os.path.join(root, 'tiny', 'width=wide,lr=0.002'))  # interrupted: a workdir without result.json
  rows, done = sweep_report.collect(sweep, root)
  assert done == 2 and 'digits_fd' not in rows[0] and rows[1]['digits_fd'] == pytest.approx(2.0)

  calls.clear()
  assert ablate.run_sweep(sweep, root, runner=runner,
                          cost=fake_cost) == ['width=narrow,lr=0.001', 'width=wide,lr=0.002']
  assert calls == ['width=narrow,lr=0.001', 'width=wide,lr=0.002']
  assert os.path.getmtime(finished) == 1_000_000  # not redone
  assert ablate.run_sweep(sweep, root, runner=runner, cost=fake_cost) == []
  result = json.load(open(finished))
  assert result['settings'] == {'width': 'narrow', 'lr': '0.002'} and result['metrics']['gflops'] == 0.08
  assert not [f for f in os.listdir(os.path.dirname(finished)) if '.tmp' in f]

  paths = ablate.collect_and_report(sweep, root, copy_to=str(tmp_path / 'docs'))
  out = os.path.join(root, 'tiny')
  rows = list(csv.DictReader(open(os.path.join(out, 'results.csv'))))
  assert [r['run'] for r in rows] == [r.name for r in ablate.expand(sweep)]
  assert [float(r['digits_fd']) for r in rows] == pytest.approx([1.0, 2.0, 1.0, 2.0])
  assert [r['width'] for r in rows] == ['narrow', 'narrow', 'wide', 'wide'] and float(rows[2]['gflops']) == 0.16
  md = open(os.path.join(out, 'results.md')).read().splitlines()
  assert md[0].startswith('Sweep `tiny`') and '4 of 4 runs finished' in md[0]
  assert md[2] == '| width | lr | gflops | digits_fd | digits_accuracy |'
  assert md[4] == '| narrow | 0.001 | 0.08 | 1 | 0.5 |' and len(md) == 8
  png = os.path.join(out, 'digits_fd_digits_accuracy_vs_lr.png')
  assert png in paths and open(png, 'rb').read(4) == b'\x89PNG'
  assert sorted(os.listdir(tmp_path / 'docs')) == ['tiny_digits_fd_digits_accuracy_vs_lr.png', 'tiny_results.md']


def test_failed_run_is_not_marked_finished(tmp_path):
  sweep = ablate.load_sweep(write_sweep(tmp_path))
  root = str(tmp_path / 'runs')
  with pytest.raises(RuntimeError, match='without'):
    ablate.run_sweep(sweep, root, runner=lambda run, workdir, cache: {'loss': 1.0}, cost=fake_cost)
  assert sweep_report.collect(sweep, root)[1] == 0


def run_ablate(*args):
  return subprocess.run([sys.executable, 'ablate.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_print_commands(tmp_path):
  sweep_path = write_sweep(tmp_path)
  result = run_ablate(f'--sweep={sweep_path}', f'--root={tmp_path}/r', '--set=train.num_steps=3', '--print_commands')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  commands = [line for line in lines if not line.startswith('#')]
  names = [r.name for r in ablate.expand(ablate.load_sweep(sweep_path))]
  assert commands == [
      f'python ablate.py --sweep={sweep_path} --root={tmp_path}/r --set=train.num_steps=3 '
      f'--only={name}' for name in names
  ]
  assert lines[-1].startswith('# then: python ablate.py') and lines[-1].endswith('--collect_only')
  assert not os.path.exists(f'{tmp_path}/r')  # nothing ran
  sample = write_sweep(tmp_path, 'tiny_sample', kind='sample', model_workdir='runs/m',
                       axes="{'steps': {'sample.num_steps': [2, 4]}}", x='steps', series=None)
  lines = run_ablate(f'--sweep={sample}', '--print_commands').stdout.strip().splitlines()
  assert lines[0].startswith('# first, once:') and len(lines) == 4
  assert lines[1].endswith('--model_workdir=runs/m --only=steps=2')


def test_train_then_sample_sweeps_end_to_end(tmp_path, monkeypatch):
  """Real runs: two 2-step tiny trainings of two seeds (one compiled train step), then a guidance sweep on the first
  (one compiled sampler)."""
  root = str(tmp_path / 'runs')
  train_sweep = ablate.load_sweep(write_sweep(tmp_path, axes="{'seed': {'seed': [1, 2]}}", x='seed', series=None),
                                  ['train.num_steps=2'])
  steps_made, make_train_step = [], train.make_train_step
  monkeypatch.setattr(train, 'make_train_step', lambda *a, **k: steps_made.append(1) or make_train_step(*a, **k))
  train._RECENT_PROGRAMS.clear()  # pylint: disable=protected-access
  assert ablate.run_sweep(train_sweep, root) == ['seed=1', 'seed=2']
  assert len(steps_made) == 1  # the second seed reuses the first one's programs (jobs/train.HOST_ONLY_FIELDS)
  result = json.load(open(os.path.join(root, 'tiny', 'seed=1', 'result.json')))['metrics']
  assert result['step'] == 2 and 0 <= result['digits_accuracy'] <= 1 and result['digits_fd'] > 0
  assert result['gflops'] == result['xla_gflops'] > 0 and 0 < result['params_m'] < 1
  # Killed after the last checkpoint but before its evaluation: the rerun evaluates it, without training.
  interrupted = os.path.join(root, 'tiny', 'seed=2')
  os.remove(os.path.join(interrupted, 'result.json'))
  lines = open(os.path.join(interrupted, 'metrics.jsonl')).read().splitlines()
  open(os.path.join(interrupted, 'metrics.jsonl'),
       'w').write(''.join(line + '\n' for line in lines if 'eval/' not in line))
  assert ablate.run_sweep(train_sweep, root) == ['seed=2']
  redone = json.load(open(os.path.join(interrupted, 'result.json')))['metrics']
  assert redone['step'] == 2 and 'digits_fd' in redone
  after = open(os.path.join(interrupted, 'metrics.jsonl')).read().splitlines()
  assert [line for line in after if 'eval/' not in line] == [line for line in lines if 'eval/' not in line]
  model_workdir = os.path.join(root, 'tiny', 'seed=1')
  sample_sweep = ablate.load_sweep(
      write_sweep(tmp_path, 'tiny_guidance', kind='sample', model_workdir=model_workdir,
                  axes="{'guidance': {'sample.guidance_scale': [1.0, 3.0]}}", x='guidance', series=None),
      ['train.num_steps=2'])
  compiled = []
  make = ablate.make_generate_fn

  def counting_make(*args):
    compiled.append(1)
    return make(*args)

  ablate.make_generate_fn = counting_make
  try:
    assert ablate.run_sweep(sample_sweep, root) == ['guidance=1', 'guidance=3']
  finally:
    ablate.make_generate_fn = make
  assert len(compiled) == 1  # the guidance scale is traced: one sampling function for the sweep
  metrics = [
      json.load(open(os.path.join(root, 'tiny_guidance', n, 'result.json')))['metrics']
      for n in ('guidance=1', 'guidance=3')
  ]
  assert all(m['model_step'] == 2 and m['num_samples'] == 16 and m['nfe'] == 4 for m in metrics)
  assert os.path.exists(os.path.join(root, 'tiny_guidance', 'guidance=3', 'samples.png'))
  paths = ablate.collect_and_report(sample_sweep, root)
  assert any(p.endswith('.png') for p in paths)

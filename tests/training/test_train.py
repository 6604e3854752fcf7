"""The training step and loop: sharding equivalence, loss that falls, outputs, mesh changes."""
import functools
import importlib.util
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from training import sharding as sharding_lib
from jobs import restore as restore_job
from jobs import sweeps, train
from training import step as training_step
from input_pipeline import StepBatcher, create_source
from configs.validate import validate_config
from models import build_model
from tests.tiny import tiny_unet_config
from training.state import create_optimizer, create_state, state_shardings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_step(config, devices):
  config.mesh.data, config.mesh.fsdp = {1: (1, 1), 8: (-1, 1)}[len(devices)] if not isinstance(devices, tuple) \
      else devices[1]
  devs = devices if not isinstance(devices, tuple) else devices[0]
  mesh = sharding_lib.create_mesh(config.mesh, devs)
  model, tx = build_model(config), create_optimizer(config.optim)
  _, shardings = state_shardings(config, model, tx, mesh)
  state = create_state(config, model, tx, mesh, shardings)
  step_fn = training_step.make_train_step(config, model, tx, mesh, shardings)
  batcher = StepBatcher(create_source(config.data), config.train.batch_size, config.seed)
  for step in range(2):
    state, metrics = step_fn(state, sharding_lib.host_batch_to_global(batcher.batch(step), mesh))
  return jax.device_get((state.params, state.power_ema)), float(metrics['loss'])


def equivalence_config():
  c = tiny_unet_config()  # its middle block's attention is sharded too
  c.model.dropout = 0.1  # dropout masks must not depend on the sharding either
  c.optim.ema_sigma_rels = (0.1,)  # a power-function EMA, sharded as the params
  c.train.ema_snapshot_every = 2
  return c


@functools.lru_cache(maxsize=1)
def one_device_result():
  return one_step(equivalence_config(), (jax.devices()[:1], (1, 1)))


@pytest.mark.parametrize('mesh', [(-1, 1), (1, 8), (2, 4)])
def test_step_on_8_devices_equals_1_device(mesh):
  devices = jax.devices()
  assert len(devices) == 8, 'tests/conftest.py asks XLA for 8 fake CPU devices'
  params_1, loss_1 = one_device_result()  # and the power-function EMA
  params_8, loss_8 = one_step(equivalence_config(), (devices, mesh))
  assert loss_1 == pytest.approx(loss_8, rel=1e-5)
  for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_fsdp_shards_large_parameters():
  c = tiny_unet_config()
  c.mesh.num_devices, c.mesh.data, c.mesh.fsdp = -1, 2, 4
  mesh = sharding_lib.create_mesh(c.mesh)
  model, tx = build_model(c), create_optimizer(c.optim)
  _, shardings = state_shardings(c, model, tx, mesh)
  spec = sharding_lib.param_partition_spec((3, 3, 64, 128), 4)
  assert spec == jax.sharding.PartitionSpec(None, None, None, 'fsdp')
  assert sharding_lib.param_partition_spec((16,), 4) == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match='needs 12 devices'):
    sharding_lib.mesh_shape(type('M', (), {'data': 3, 'fsdp': 4})(), 8)


def test_num_devices_takes_the_first_devices_and_bad_counts_are_refused():
  c = tiny_unet_config(mesh__num_devices=2)
  mesh = sharding_lib.create_mesh(c.mesh)
  assert mesh.shape == {'data': 2, 'fsdp': 1} and list(mesh.devices.flat) == jax.devices()[:2]
  assert sharding_lib.create_mesh(tiny_unet_config(mesh__num_devices=-1).mesh).size == 8
  c.mesh.fsdp = 4
  with pytest.raises(ValueError, match=r"the mesh's 2 devices \(config.mesh.num_devices=2 of 8\) cannot be split"):
    sharding_lib.create_mesh(c.mesh)
  c.mesh.data = 1
  with pytest.raises(ValueError, match=r'needs 4 devices, but the mesh has 2 devices \(config.mesh.num_devices=2'):
    sharding_lib.create_mesh(c.mesh)
  with pytest.raises(ValueError, match=r'config.mesh.num_devices=9, but 8 devices are present'):
    sharding_lib.create_mesh(tiny_unet_config(mesh__num_devices=9).mesh)
  with pytest.raises(ValueError, match=r'config.mesh.num_devices=0 must be a positive size or -1'):
    validate_config(tiny_unet_config(mesh__num_devices=0))


def read_metrics(workdir, name):
  import json
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [(r['step'], r[name]) for r in records if name in r]


def read_event_tags(workdir):
  """Scalar tags in the TensorBoard event files (TFRecord framing, parsed with tensorboardX's protos)."""
  import struct
  from tensorboardX.proto import event_pb2
  tags = set()
  for name in os.listdir(os.path.join(workdir, 'tensorboard')):
    if name == 'plugins':  # the profiler's trace
      continue
    data = open(os.path.join(workdir, 'tensorboard', name), 'rb').read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      tags.update(v.tag for v in event.summary.value)
      pos += 12 + length + 4
  return tags


def test_loss_falls_and_outputs_are_written(tmp_path):
  c = tiny_unet_config(train__num_steps=60, train__log_every=20, train__checkpoint_every=30, train__sample_grid=8,
                       train__profile_steps=3, mesh__num_devices=2)  # XLA:CPU traces multi-device programs only
  c.optim.learning_rate = 3e-3
  train.train_and_evaluate(c, str(tmp_path))
  losses = [v for _, v in read_metrics(tmp_path, 'loss')]
  assert len(losses) == 3 and losses[-1] < 0.7 * losses[0], losses
  assert {'loss', 'grad_norm', 'learning_rate', 'steps_per_second', 'samples'} <= read_event_tags(tmp_path)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['30', '60']
  assert os.path.exists(tmp_path / 'samples' / 'step_00000060.png')
  assert trace_step_count(tmp_path) == 3  # the profile holds steps 2-4: the jitted step ran 3 times in it


def trace_step_count(workdir):
  """How often the jitted train step ran inside the profiler trace of the run (Chrome trace events, one file)."""
  import glob
  import gzip
  import json
  (path,) = glob.glob(os.path.join(workdir, 'tensorboard', 'plugins', 'profile', '*', '*.trace.json.gz'))
  assert glob.glob(os.path.join(os.path.dirname(path), '*.xplane.pb'))  # what TensorBoard's profile tab reads
  events = json.load(gzip.open(path))['traceEvents']
  return sum(1 for e in events if e.get('ph') == 'X' and re.fullmatch(r'\S*Execute \(jit_train_steps\)', e['name']))


def test_writer_without_tensorboard_backends_keeps_jsonl_and_warns(tmp_path, monkeypatch, caplog):
  """The GPU image has neither TensorFlow nor tensorboardX: training must still log (metrics.jsonl, console)."""
  import importlib.util
  from training import writers
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(writers.importlib.util, 'find_spec', lambda name, *a: None
                      if name in ('tensorflow', 'tensorboardX') else real_find_spec(name, *a))
  writer = writers.create_writer(str(tmp_path))
  writer.write_scalars(3, {'loss': 0.5})
  writer.close()
  assert read_metrics(tmp_path, 'loss') == [(3, 0.5)] and not os.path.exists(tmp_path / 'tensorboard')
  assert any('pip install tensorboardX' in r.getMessage() for r in caplog.records)


def test_tensorflow_without_tensorboard_writes_events_through_tensorboardx(tmp_path, monkeypatch):
  """tensorflow-cpu 2.21 comes without tensorboard, which clu's TensorFlow writer imports: use tensorboardX."""
  import importlib.machinery
  import importlib.util
  from training import writers
  real_find_spec = importlib.util.find_spec
  found = {'tensorflow': importlib.machinery.ModuleSpec('tensorflow', None), 'tensorboard': None}
  monkeypatch.setattr(writers.importlib.util, 'find_spec', lambda name, *a: found[name]
                      if name in found else real_find_spec(name, *a))
  writer = writers.create_writer(str(tmp_path))
  writer.write_scalars(3, {'loss': 0.5})
  writer.close()
  assert read_metrics(tmp_path, 'loss') == [(3, 0.5)]
  assert read_event_tags(tmp_path) >= {'loss'}


@pytest.mark.skipif(importlib.util.find_spec('torch') is None, reason='PyTorch is not installed: nothing to hide')
def test_a_run_starts_without_importing_pytorch_or_scikit_learn(tmp_path):
  """tensorboardX imports PyTorch when installed (2 s), scikit-learn's digits loader all of scikit-learn (1.6 s): a
  training run's writer and digits read neither, and PyTorch still imports afterwards."""
  code = ('import sys; from training.writers import create_writer; from input_pipeline import create_source; '
          'from tests.tiny import tiny_unet_config; '
          f'w = create_writer({str(tmp_path)!r}); w.write_scalars(1, {{"loss": 0.5}}); w.close(); '
          'source = create_source(tiny_unet_config().data); '
          'print(len(source), sorted(m for m in ("torch", "sklearn") if m in sys.modules)); import torch')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split('\n')[-2] == '1797 []'
  assert read_event_tags(tmp_path) == {'loss'}


def test_checkpoint_restores_under_another_mesh(tmp_path):
  from training.checkpoints import CheckpointStore
  c = tiny_unet_config(train__num_steps=2, train__checkpoint_every=2)
  train.train_and_evaluate(c, str(tmp_path))  # on one device
  c.mesh.num_devices = -1  # restored on all 8, replicated or split
  restored = {}
  for shape in [(8, 1), (2, 4), (1, 8)]:
    c.mesh.data, c.mesh.fsdp = shape
    mesh = sharding_lib.create_mesh(c.mesh)
    model, tx = build_model(c), create_optimizer(c.optim)
    abstract, shardings = state_shardings(c, model, tx, mesh)
    store = CheckpointStore(str(tmp_path))
    state, step = store.restore_latest(abstract)
    store.close()
    assert step == 2
    restored[shape] = jax.device_get(state)
    if shape[1] > 1:  # parameters really are split over fsdp
      kernel = state.params['up_0_res_0']['conv1']['kernel']
      assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, 'fsdp', None) or \
          kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, 'fsdp')
  for shape in [(2, 4), (1, 8)]:
    for a, b in zip(jax.tree.leaves(restored[(8, 1)]), jax.tree.leaves(restored[shape])):
      np.testing.assert_array_equal(a, b)


def perturb(parent, key):
  """parent[key] changed to another value of its kind; every leaf of a section."""
  value = parent[key]
  if isinstance(value, ml_collections.ConfigDict):
    if not value:  # no evaluators: one
      parent[key] = {'digits': {'every_steps': 2, 'num_samples': 16}}
    for name in list(parent[key].keys()):
      perturb(parent[key], name)
  elif isinstance(value, bool):
    parent[key] = not value
  elif isinstance(value, (int, float)):
    parent[key] = value + 3
  elif isinstance(value, str):
    parent[key] = value + '_other'
  elif isinstance(value, tuple):
    parent[key] = value[:-1] if value else (2,)
  else:
    assert value is None, (key, value)
    parent[key] = 'other'


def lowered_programs(config, workdir):
  """The lowered text of the init and the stacked train step that train_and_evaluate would run for config."""
  model, tx, mesh, abstract, shardings, store = restore_job.setup(config, str(workdir))
  store.close()
  train._RECENT_PROGRAMS.clear()
  init, step_fn = train.training_programs(config, model, tx, mesh, shardings, repa_encoder=None)
  image = jax.ShapeDtypeStruct((2, config.train.batch_size, 8, 8, 1), np.float32)
  batch = {'image': image, 'label': jax.ShapeDtypeStruct(image.shape[:2], np.int32)}
  return init.lower(jax.random.PRNGKey(0)).as_text(), step_fn.lower(abstract, batch).as_text()


def test_host_only_fields_shape_no_program_so_runs_that_differ_in_them_share_programs(tmp_path):
  """Every field of train.HOST_ONLY_FIELDS changed at once leaves the lowered init and train step as they were, so a
  later run of this process may reuse them; a change in any other field, or another mesh, makes new ones."""
  base = tiny_unet_config()
  other = tiny_unet_config()
  for name in train.HOST_ONLY_FIELDS:
    parent, _, last = name.rpartition('.')
    perturb(sweeps.get_field(other, parent) if parent else other, last)
  assert other.seed != base.seed and other.sample.num_steps != base.sample.num_steps and other.evals
  assert lowered_programs(base, tmp_path / 'a') == lowered_programs(other, tmp_path / 'b')

  mesh = sharding_lib.create_mesh(base.mesh)
  assert train.programs_key(base, mesh) == train.programs_key(other, mesh)
  for changed in (tiny_unet_config(optim__learning_rate=1e-3), tiny_unet_config(train__grad_accum_steps=2),
                  tiny_unet_config(diffusion__objective='v')):
    assert train.programs_key(changed, mesh) != train.programs_key(base, mesh)
  base.mesh.num_devices = 2
  assert train.programs_key(base, sharding_lib.create_mesh(base.mesh)) != train.programs_key(other, mesh)

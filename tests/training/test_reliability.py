"""Preemption, exact resume, crash safety, the non-finite guard and refusals that keep results safe."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jobs import train
from jobs import restore as restore_job
from training.checkpoints import CheckpointStore
from models import build_model
from jobs import sample as sample_lib
from jobs.sample import run_sample_job
from tests.processes import env_with_devices
from tests.tiny import tiny_unet_config
from training.state import create_optimizer, state_shardings
from training import sharding as sharding_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def restore(config, workdir):
  """The newest restorable TrainState in workdir, as numpy, and its step."""
  model, tx = build_model(config), create_optimizer(config.optim)
  mesh = sharding_lib.create_mesh(config.mesh)
  abstract, _ = state_shardings(config, model, tx, mesh)
  store = CheckpointStore(workdir)
  state, step = store.restore_latest(abstract)
  store.close()
  return jax.device_get(state), step


def assert_states_identical(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def losses(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {r['step']: r['loss'] for r in records if 'loss' in r}


def test_resume_is_bit_exact(tmp_path):
  c = tiny_unet_config(train__num_steps=6, train__checkpoint_every=3, train__log_every=1, train__ema_snapshot_every=2)
  c.optim.ema_sigma_rels = (0.05,)
  train.train_and_evaluate(c, str(tmp_path / 'straight'))
  c.train.num_steps = 3
  train.train_and_evaluate(c, str(tmp_path / 'resumed'))
  c.train.num_steps = 6
  train.train_and_evaluate(c, str(tmp_path / 'resumed'))
  a, step_a = restore(c, str(tmp_path / 'straight'))
  b, step_b = restore(c, str(tmp_path / 'resumed'))
  assert step_a == step_b == 6
  assert_states_identical(a, b)  # params, EMA, power-function EMA, optimizer state, step, RNG
  assert losses(tmp_path / 'straight') == losses(tmp_path / 'resumed')
  snapshots = {
      run: CheckpointStore(str(tmp_path / run), keep=None, name='ema_snapshots') for run in ('straight', 'resumed')
  }
  assert snapshots['straight'].steps() == [2, 4, 6] and snapshots['resumed'].steps() == [2, 3, 4, 6]  # 3: the end
  for step in (2, 4, 6):
    assert_states_identical(*(store.restore(step, {'power_ema': [a.params]}) for store in snapshots.values()))


def run_main(workdir, *overrides, wait=True):
  env = env_with_devices(1)
  cmd = [sys.executable, 'main.py', '--config=tests/tiny_config.py', f'--workdir={workdir}', *overrides]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if wait:
    out, err = proc.communicate(timeout=400)
    return proc.returncode, err
  return proc


def wait_for(predicate, timeout=300, interval=0.02):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(interval)
  return False


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
  interrupted = tmp_path / 'interrupted'
  proc = run_main(interrupted, '--config.train.num_steps=100000', '--config.train.checkpoint_every=100000',
                  '--config.train.log_every=1', wait=False)
  metrics = interrupted / 'metrics.jsonl'
  assert wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert 'checkpoint saved, rerun the same command to resume' in err
  stopped_at = max(int(s) for s in os.listdir(interrupted / 'checkpoints'))
  assert stopped_at >= 3
  total = stopped_at + 3
  once = ('--config.train.log_every=1', '--config.train.checkpoint_every=100000')  # saved at the end only
  code, err = run_main(interrupted, f'--config.train.num_steps={total}', *once)
  assert code == 0 and f'resumed from the checkpoint of step {stopped_at}' in err
  code, _ = run_main(tmp_path / 'straight', f'--config.train.num_steps={total}', *once)
  assert code == 0
  c = tiny_unet_config()
  a, _ = restore(c, str(tmp_path / 'straight'))
  b, step = restore(c, str(interrupted))
  assert step == total
  assert_states_identical(a, b)
  assert losses(tmp_path / 'straight') == losses(interrupted)


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
  workdir = tmp_path / 'w'
  proc = run_main(workdir, '--config.train.num_steps=100000', '--config.train.checkpoint_every=1',
                  '--config.train.keep_checkpoints=100', wait=False)
  ckpts = workdir / 'checkpoints'
  in_save = lambda: ckpts.exists() and any('tmp' in d for d in os.listdir(ckpts)) and \
      any(d.isdigit() for d in os.listdir(ckpts))
  caught = wait_for(in_save, interval=0.002)
  proc.kill()
  proc.communicate()
  assert caught, 'never saw a checkpoint being written'
  finished = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  c = tiny_unet_config()
  _, step = restore(c, str(workdir))
  assert step == finished[-1]


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  c = tiny_unet_config(train__num_steps=4, train__checkpoint_every=2)
  train.train_and_evaluate(c, str(tmp_path))
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '4' / 'state'):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'garbage')
  with caplog.at_level(logging.WARNING):
    _, step = restore(c, str(tmp_path))
  assert step == 2
  assert 'checkpoint of step 4' in caplog.text and 'trying the previous one' in caplog.text
  c.train.num_steps = 6  # the resumed run reaches step 4 again: the unrestorable one is moved aside, not deleted
  train.train_and_evaluate(c, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4', '4.replaced', '6']
  assert restore(c, str(tmp_path))[1] == 6
  moved = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / 'checkpoints' / '4.replaced' / 'state') for f in fs]
  assert moved and all(open(f, 'rb').read() == b'garbage' for f in moved)


def nan_batcher(bad_step):
  """train.StepBatcher whose batch of `bad_step` is all NaN."""
  class NaNBatcher(train.StepBatcher):
    def batch(self, step):
      b = super().batch(step)
      if step == bad_step:
        b['image'] = np.full_like(b['image'], np.nan)
      return b

  return NaNBatcher


NaNAtStep3 = nan_batcher(3)


def test_nonfinite_stop_names_the_step_and_keeps_good_checkpoints(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'StepBatcher', NaNAtStep3)
  c = tiny_unet_config(train__num_steps=6, train__checkpoint_every=2, train__log_every=1)
  with pytest.raises(train.NonFiniteError, match='non-finite loss or gradient at step 3'):
    train.train_and_evaluate(c, str(tmp_path))
  state, step = restore(c, str(tmp_path))
  assert step == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_a_rerun_after_a_stop_rewrites_the_snapshots_written_after_the_last_checkpoint(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'StepBatcher', NaNAtStep3)
  c = tiny_unet_config(train__num_steps=4, train__checkpoint_every=4, train__ema_snapshot_every=2)
  c.optim.ema_sigma_rels = (0.05,)
  with pytest.raises(train.NonFiniteError, match='at step 3'):
    train.train_and_evaluate(c, str(tmp_path))
  assert not os.listdir(tmp_path / 'checkpoints') and os.listdir(tmp_path / 'ema_snapshots') == ['2']
  monkeypatch.undo()
  train.train_and_evaluate(c, str(tmp_path))  # starts again from step 0 and writes snapshot 2 again
  assert sorted(os.listdir(tmp_path / 'ema_snapshots')) == ['2', '2.replaced', '4']


def test_nonfinite_skip_drops_and_counts_the_update(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'StepBatcher', NaNAtStep3)
  c = tiny_unet_config(train__num_steps=6, train__checkpoint_every=6, train__log_every=1)
  c.train.nonfinite = 'skip'
  train.train_and_evaluate(c, str(tmp_path))
  state, step = restore(c, str(tmp_path))
  assert step == 6 and int(state.nonfinite_count) == 1 and int(state.first_nonfinite_step) == 3
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  counts = [int(x) for x in jax.tree.leaves(state.opt_state) if np.issubdtype(x.dtype, np.integer)]
  assert counts and set(counts) == {6}  # the schedule went on through the skipped step: the logged rate was used


def test_a_skip_run_resumed_with_stop_stops_at_a_new_nonfinite_step_only(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'StepBatcher', NaNAtStep3)
  c = tiny_unet_config(train__num_steps=4, train__checkpoint_every=2, train__log_every=1)
  c.train.nonfinite = 'skip'
  train.train_and_evaluate(c, str(tmp_path))
  c.train.nonfinite, c.train.num_steps = 'stop', 6
  monkeypatch.setattr(train, 'StepBatcher', nan_batcher(5))
  with pytest.raises(train.NonFiniteError, match='non-finite loss or gradient at step 5'):
    train.train_and_evaluate(c, str(tmp_path))
  monkeypatch.undo()
  train.train_and_evaluate(c, str(tmp_path))  # step 3, skipped before the checkpoint of step 4, stops nothing
  state, step = restore(c, str(tmp_path))
  assert step == 6 and int(state.nonfinite_count) == 1 and int(state.first_nonfinite_step) == -1


def test_gradient_clipping_turned_on_or_off_at_a_resume_carries_the_optimizer_state_over(tmp_path, caplog):
  c = tiny_unet_config(train__num_steps=2, train__checkpoint_every=2)
  c.optim.grad_clip = 0.0
  train.train_and_evaluate(c, str(tmp_path))
  unclipped, _ = restore(c, str(tmp_path))
  c.optim.grad_clip = 1.0  # an optax.chain level more in the optimizer state
  model, _, mesh, abstract, shardings, store = restore_job.setup(c, str(tmp_path))
  carried, step = store.restore_latest(abstract,
                                       lambda: [restore_job.toggled_clip_layout(c, model, mesh, abstract, shardings)])
  store.close()
  assert step == 2 and jax.tree.structure(carried.opt_state) == jax.tree.structure(abstract.opt_state)
  assert_states_identical(jax.tree.leaves(jax.device_get(carried)), jax.tree.leaves(unclipped))
  for clip, steps in ((1.0, 4), (0.0, 6)):
    c.optim.grad_clip, c.train.num_steps = clip, steps
    with caplog.at_level(logging.WARNING):
      train.train_and_evaluate(c, str(tmp_path))
    assert f'restored from a run with gradient clipping {"off" if clip else "on"}' in caplog.text
    caplog.clear()
    state, step = restore(c, str(tmp_path))
    assert step == steps
  counts = [int(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) == 0]
  assert counts and set(counts) == {6}  # Adam's step count went on through both toggles
  c.optim.grad_clip = 1.0
  assert restore_job.restore_for_inference(c, str(tmp_path))[2] == 6  # sampling with the other setting


def test_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  c = tiny_unet_config(train__num_steps=4, train__checkpoint_every=2)
  original = CheckpointStore.save

  def failing_save(self, step, state, signature):
    if step == 4:
      raise_enospc = lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space left on device'))
      monkeypatch.setattr(self.manager, 'save', raise_enospc)
    return original(self, step, state, signature)

  monkeypatch.setattr(CheckpointStore, 'save', failing_save)
  with pytest.raises(RuntimeError, match='the disk is full; the checkpoint of step 2 is intact'):
    train.train_and_evaluate(c, str(tmp_path))
  monkeypatch.setattr(CheckpointStore, 'save', original)
  _, step = restore(c, str(tmp_path))
  assert step == 2


def snapshot(directory):
  return {
      os.path.join(r, f): (os.path.getsize(os.path.join(r, f)), os.path.getmtime(os.path.join(r, f)))
      for r, _, files in os.walk(directory) for f in files
  }


def test_workdir_of_another_model_is_refused_untouched(tmp_path):
  c = tiny_unet_config(train__num_steps=2, train__checkpoint_every=2)
  train.train_and_evaluate(c, str(tmp_path))
  before = snapshot(tmp_path / 'checkpoints')
  c.model.base_channels = 16
  with pytest.raises(
      ValueError, match='holds checkpoints of a different model.*model.base_channels: checkpoint '
      'has 8, config has 16'):
    train.train_and_evaluate(c, str(tmp_path))
  assert snapshot(tmp_path / 'checkpoints') == before


def test_sample_job_refuses_to_overwrite_makes_its_folder_and_refuses_nonfinite_samples(tmp_path):
  c = tiny_unet_config(train__num_steps=2, train__checkpoint_every=2)
  train.train_and_evaluate(c, str(tmp_path))
  path = run_sample_job(c, str(tmp_path))
  data = np.load(path)
  assert data['arr_0'].shape == (8, 8, 8, 1) and data['arr_0'].dtype == np.uint8
  np.testing.assert_array_equal(data['arr_1'], np.arange(8) % 10)
  before = snapshot(tmp_path)
  with pytest.raises(FileExistsError, match='pass --overwrite'):
    run_sample_job(c, str(tmp_path))
  assert snapshot(tmp_path) == before
  run_sample_job(c, str(tmp_path), overwrite=True)
  c.sample.output = 'more/samples.npz'  # a folder not there yet is made before sampling
  assert np.load(run_sample_job(c, str(tmp_path)))['arr_0'].shape == (8, 8, 8, 1)
  with pytest.raises(FloatingPointError, match=r'2 of 8 sampled values are not finite \(NaN or inf\): the sampler '
                     r'diverged'):  # rather than black pixels
    sample_lib.to_uint8(np.asarray([0.0, np.nan, 1.0, -np.inf, 0.5, 0.5, -1.0, 1.0]))


def test_fewer_classes_than_the_digits_fails_at_start(tmp_path):
  digits = tiny_unet_config()
  digits.data.num_classes = 5  # labels 5..9 fell outside the class embedding: NaN at step 0
  with pytest.raises(ValueError, match=r'the digits dataset has 10 classes but config\.data\.num_classes=5'):
    train.train_and_evaluate(digits, str(tmp_path / 'five'))
  assert not os.path.exists(tmp_path / 'five')

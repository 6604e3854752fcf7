"""config.train.steps_per_call: k steps per jitted call train exactly as k calls of one step, on the 8-device mesh."""
import os
import signal

import jax
import numpy as np
import pytest

from training import sharding as sharding_lib
from jobs import train
from configs.validate import validate_config
from configs.quickstart import get_config as quickstart_config
from input_pipeline import StepBatcher
from input_pipeline.loader import step_chunks
from tests.training.test_reliability import losses
from tests.tiny import tiny_unet_config


def config(steps_per_call, **overrides):
  """A one-level U-Net (quick to trace and save) for 8 steps, logged every 4, saved only at the end."""
  c = tiny_unet_config(
      **{
          'model__channel_mult': (1,), 'model__attn_resolutions': (), 'train__num_steps': 8, 'train__log_every': 4,
          'train__checkpoint_every': 8, **overrides
      })
  c.train.steps_per_call = steps_per_call
  return validate_config(c)


def assert_states_close(a, b):
  a, b = jax.device_get((a, b))
  assert int(a.step) == int(b.step)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):  # params, EMA, optimizer state, RNG
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def one_step_per_call(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('k1')
  return train.train_and_evaluate(config(1), str(workdir)), workdir


def test_four_steps_per_call_train_as_single_steps(one_step_per_call, tmp_path):
  reference, reference_dir = one_step_per_call
  state = train.train_and_evaluate(config(4, data__prefetch=2), str(tmp_path))  # chunks from the prefetch thread
  assert_states_close(state, reference)
  expected = losses(reference_dir)
  assert sorted(losses(tmp_path)) == sorted(expected) == [4, 8]
  for step, loss in losses(tmp_path).items():  # each logged loss is the mean over the same 4 steps
    assert loss == pytest.approx(expected[step], rel=1e-5)


class SigtermAtStep5(StepBatcher):
  def batch(self, step):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().batch(step)


def test_resume_off_the_call_grid_and_sigterm_mid_call(one_step_per_call, tmp_path, caplog, monkeypatch):
  """Saved at step 3 with k=1, resumed with k=4: one call of steps 3..4, then 4..8, during which a SIGTERM
  arrives (while step 5's batch is read); the call finishes and step 8 is saved, matching 8 single steps."""
  reference, _ = one_step_per_call
  train.train_and_evaluate(config(1, train__num_steps=3), str(tmp_path))
  calls, training_programs = [], train.training_programs

  def recording_training_programs(*args, **kwargs):
    init, fn = training_programs(*args, **kwargs)
    return init, lambda state, batches: calls.append(batches['image'].shape[0]) or fn(state, batches)

  monkeypatch.setattr(train, 'training_programs', recording_training_programs)
  monkeypatch.setattr(train, 'StepBatcher', SigtermAtStep5)
  with caplog.at_level('INFO'):
    state = train.train_and_evaluate(config(4, train__num_steps=12, train__checkpoint_every=12), str(tmp_path))
  assert 'resumed from the checkpoint of step 3' in caplog.text
  assert 'stopped at step 8 after a signal' in caplog.text
  assert calls == [1, 4]
  assert_states_close(state, reference)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '8']


def test_step_chunks_end_on_multiples_of_k():
  assert list(step_chunks(0, 8, 4)) == [(0, 4), (4, 8)]
  assert list(step_chunks(3, 8, 4)) == [(3, 4), (4, 8)]
  assert list(step_chunks(4, 8, 4)) == [(4, 8)]
  assert list(step_chunks(5, 7, 1)) == [(5, 6), (6, 7)]


def test_stacked_batch_splits_the_batch_axis_on_8_devices():
  c = tiny_unet_config()
  c.mesh.num_devices, c.mesh.data, c.mesh.fsdp = -1, 2, 4
  mesh = sharding_lib.create_mesh(c.mesh)
  host = {'image': np.zeros((3, 16, 8, 8, 1), np.float32), 'label': np.zeros((3, 16), np.int32)}
  batches = sharding_lib.host_batch_to_global(host, mesh, stacked=True)
  assert batches['image'].sharding.spec == jax.sharding.PartitionSpec(None, ('data', 'fsdp'))
  assert {s.data.shape for s in batches['image'].addressable_shards} == {(3, 2, 8, 8, 1)}


@pytest.mark.parametrize('path,value', [
    ('train.num_steps', 1502),
    ('train.log_every', 50),
    ('train.checkpoint_every', 502),
    ('train.sample_every', 250),
    ('evals.digits.every_steps', 10),
])
def test_validate_config_rejects_a_steps_per_call_that_does_not_divide(path, value):
  c = quickstart_config()
  c.train.steps_per_call = 4
  validate_config(c)
  section, *rest = path.split('.')
  target = c[section]
  for key in rest[:-1]:
    target = target[key]
  target[rest[-1]] = value
  with pytest.raises(ValueError, match=rf'config.train.steps_per_call=4 does not divide config.{path}={value}'):
    validate_config(c)


def test_validate_config_rejects_steps_per_call_below_one():
  c = quickstart_config()
  c.train.steps_per_call = 0
  with pytest.raises(ValueError, match='config.train.steps_per_call=0 must be positive'):
    validate_config(c)

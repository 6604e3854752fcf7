"""Multi-host runs, for real: two processes of main.py with 2 CPU devices each, joined by jax.distributed
(gloo collectives on localhost), against one process on 4 devices.

Each process reads only its host's slice of every batch, checkpoints are written by both together, and
sample arrays are gathered from both; the results must match the one-process run.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import main
from jobs import train
from jobs.sample import run_sample_job
from tests.training.test_reliability import restore
from tests.training.test_train import read_metrics
from tests.processes import env_with_devices
from tests.tiny import tiny_unet_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(*args, timeout=500):
  """main.py in two processes of 2 devices each; returns their stderr (both must exit 0)."""
  port = free_port()
  procs = []
  for process_id in range(2):
    # No persistent compilation cache: one process finding a program in it while the other compiles reaches the
    # first all-reduce too late for gloo's 30 s rendezvous (seen after an interrupted suite left half the entries).
    env = env_with_devices(2, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo', JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
                           JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(process_id), JAX_ENABLE_COMPILATION_CACHE='false')
    procs.append(
        subprocess.Popen([sys.executable, 'main.py', '--config=tests/tiny_config.py', '--jax_distributed', *args],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  errors = []
  for proc in procs:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.split('\nExtension modules:')[0][-3000:]  # the error, not the module list
    errors.append(err)
  return errors


def test_two_hosts_train_and_sample_like_one_host_with_as_many_devices(tmp_path):
  """One test, not a module fixture shared by several: under pytest-xdist each worker would start its own pair of
  processes, and four jax processes on two cores once made one abort (SIGABRT)."""
  errors = run_two_processes(f'--workdir={tmp_path / "two"}')
  assert 'process 0 of 2, 2 local / 4 global devices' in errors[0]
  assert 'process 1 of 2, 2 local / 4 global devices' in errors[1]
  config = tiny_unet_config(mesh__num_devices=4)  # tests/tiny_config.py, on as many of this process's devices
  train.train_and_evaluate(config, str(tmp_path / 'one'))
  for name in ('loss', 'grad_norm'):
    two, one = dict(read_metrics(tmp_path / 'two', name)), dict(read_metrics(tmp_path / 'one', name))
    assert sorted(two) == sorted(one) == [2, 4]
    np.testing.assert_allclose([two[s] for s in (2, 4)], [one[s] for s in (2, 4)], rtol=1e-5)
  # the checkpoint both hosts wrote restores in one process, equal to the one-host run's state
  (state_two, step_two), (state_one, step_one) = restore(config,
                                                         str(tmp_path / 'two')), restore(config, str(tmp_path / 'one'))
  assert step_two == step_one == 4
  for a, b in zip(jax.tree.leaves(state_two), jax.tree.leaves(state_one)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  # sampling: both hosts build the same noise and labels, place their rows, and gather the images
  run_two_processes(f'--workdir={tmp_path / "two"}', '--mode=sample', '--config.sample.num_samples=12',
                    '--config.sample.output=two_hosts.npz')
  config.sample.num_samples, config.sample.output = 12, 'one_host.npz'
  run_sample_job(config, str(tmp_path / 'two'))
  with np.load(tmp_path / 'two' / 'two_hosts.npz') as two, np.load(tmp_path / 'two' / 'one_host.npz') as one:
    assert two['arr_0'].shape == (12, 8, 8, 1)
    assert np.abs(two['arr_0'].astype(int) - one['arr_0']).max() <= 1  # uint8 rounding of equal floats
    np.testing.assert_array_equal(two['arr_1'], one['arr_1'])


def test_distributed_settings_from_the_environment():
  assert main.distributed_settings({}) == {}  # jax detects SLURM, Open MPI or TPUs itself
  env = {'JAX_COORDINATOR_ADDRESS': 'host0:1234', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}
  assert main.distributed_settings(env) == {'num_processes': 4, 'process_id': 3}
  with pytest.raises(ValueError, match='needs all of JAX_COORDINATOR_ADDRESS'):
    main.distributed_settings({'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'})
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='x' is not an integer"):
    main.distributed_settings({**env, 'JAX_PROCESS_ID': 'x'})

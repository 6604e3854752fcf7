"""models/weight_files.py: the one reader of public checkpoint files behind every converter."""
import argparse

import numpy as np
import pytest

from models.weight_files import read_state_dict


def test_npz_and_safetensors_need_no_torch(tmp_path):
  import safetensors.numpy
  tensors = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3), 'b.bias': np.ones(3, np.float32)}
  np.savez(tmp_path / 'w.npz', **tensors)
  safetensors.numpy.save_file(tensors, str(tmp_path / 'w.safetensors'))
  for name in ('w.npz', 'w.safetensors'):
    read = read_state_dict(str(tmp_path / name))
    assert read.keys() == tensors.keys()
    for key, value in tensors.items():
      np.testing.assert_array_equal(read[key], value)


def test_missing_file_names_where_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nope\.pt.*does not exist\. Get it from https://example'):
    read_state_dict(str(tmp_path / 'nope.pt'), 'Get it from https://example.org/w.pt.')


def test_torch_training_checkpoint_reads_its_ema_weights_as_float32(tmp_path):
  torch = pytest.importorskip('torch')
  ema = {'x.weight': torch.arange(4, dtype=torch.bfloat16), 'step': torch.tensor(7)}
  torch.save(
      {
          'model': {'x.weight': torch.zeros(4)}, 'ema': ema, 'opt': {'param_groups': [{'lr': 1e-4}]},
          'args': argparse.Namespace(model='DiT-XL/2')
      }, tmp_path / 'ckpt.pt')  # DiT's train.py layout
  read = read_state_dict(str(tmp_path / 'ckpt.pt'))
  assert read['x.weight'].dtype == np.float32 and read['step'].dtype == np.int64
  np.testing.assert_array_equal(read['x.weight'], [0, 1, 2, 3])
  torch.save({'x.weight': torch.ones(2)}, tmp_path / 'plain.pth')
  np.testing.assert_array_equal(read_state_dict(str(tmp_path / 'plain.pth'))['x.weight'], [1, 1])
  torch.save({'config': {'lr': 1}, 'epoch': 3}, tmp_path / 'other.pt')
  with pytest.raises(ValueError, match=r"no state dict of tensors: its top-level keys are \['config', 'epoch'\]"):
    read_state_dict(str(tmp_path / 'other.pt'))


def test_key_and_shape_problems_name_what_differs():
  from models.weight_files import key_and_shape_problems
  expected = {'a': (2, 3), 'b': (4,), 'c': (1,)}
  assert key_and_shape_problems(dict(expected), expected) == []
  got = {'a': (3, 2), 'b': (4,), 'd': (1,)}
  assert key_and_shape_problems(
      got, expected) == ['missing keys: c', 'unexpected keys: d', 'misshaped keys: a (3, 2) (expected (2, 3))']
  many = key_and_shape_problems({}, {f'k{i:02d}': (1,) for i in range(11)})
  assert many == ['missing keys: k00, k01, k02, k03, k04, k05, k06, k07 and 3 more']

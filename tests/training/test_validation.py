"""config.val: the held-out loss of fixed, noised examples, logged during training for params and EMA."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from training import sharding as sharding_lib
from jobs import train
from jobs.train import held_out_loss
from configs.validate import validate_config
from models import build_model
from tests.tiny import tiny_unet_config
from training.state import create_optimizer, create_state


@pytest.fixture(scope='module')
def digit_folders(tmp_path_factory):
  """The embedded digits as PNG folders: the first 1,500 to train on, the other 297 held out."""
  from sklearn.datasets import load_digits
  root = tmp_path_factory.mktemp('digits')
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  for split, rows in (('train', range(1500)), ('val', range(1500, len(images)))):
    for i in rows:
      os.makedirs(root / split / str(digits.target[i]), exist_ok=True)
      Image.fromarray(images[i]).save(root / split / str(digits.target[i]) / f'{i}.png')
  return root


def folder_config(root, **val):
  c = tiny_unet_config(train__num_steps=40, train__log_every=20, train__checkpoint_every=40)
  c.data.update(source='image_folder', path=str(root / 'train'))
  c.optim.learning_rate = 3e-3
  c.val.update({'every_steps': 20, 'path': str(root / 'val'), 'num_examples': 64, 'batch_size': 32, **val})
  return validate_config(c)


def test_held_out_loss_is_logged_from_step_0_and_falls(digit_folders, tmp_path):
  c = folder_config(digit_folders)
  train.train_and_evaluate(c, str(tmp_path))
  rows = {r['step']: r for r in map(json.loads, open(tmp_path / 'metrics.jsonl')) if 'val/loss' in r}
  assert sorted(rows) == [0, 20, 40]
  # step 0: the U-Net's zero-initialised output layer predicts eps = 0, so the loss is the mean of eps^2 over
  # 64 x 64 fixed noise values (chi-square mean 1, std 0.022), and the EMA is the params
  assert rows[0]['val/loss'] == pytest.approx(1.0, abs=0.08)
  assert rows[0]['val/ema_loss'] == rows[0]['val/loss']
  assert rows[40]['val/loss'] < 0.8 * rows[0]['val/loss']
  assert rows[40]['val/ema_loss'] != rows[40]['val/loss']


def test_held_out_loss_is_a_function_of_the_params_alone(digit_folders):
  """The same examples, times and noise at every call, on any mesh."""
  c = folder_config(digit_folders)
  model, tx = build_model(c), create_optimizer(c.optim)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding_lib.create_mesh(c.mesh, devices)
    state = create_state(c, model, tx, mesh)
    state = state.replace(params=jax.tree.map(lambda p: p + 0.01, state.params))  # not the EMA any more
    held_out = held_out_loss(c, model, mesh)
    results.append(held_out(state))
    again = held_out(state)
    assert again['val/loss'] == results[-1]['val/loss']
  assert results[0]['val/loss'] == pytest.approx(results[1]['val/loss'], rel=1e-5)
  assert results[0]['val/ema_loss'] == pytest.approx(results[1]['val/ema_loss'], rel=1e-5)
  assert abs(results[0]['val/loss'] - results[0]['val/ema_loss']) > 1e-4


def test_classifier_reports_held_out_accuracy(digit_folders):
  from configs.digits_classifier import get_config
  c = get_config()
  c.data.update(source='image_folder', path=str(digit_folders / 'train'))
  c.val.update(every_steps=100, path=str(digit_folders / 'val'), num_examples=96, batch_size=32)
  c = validate_config(c)
  model, tx = build_model(c), create_optimizer(c.optim)
  mesh = sharding_lib.create_mesh(c.mesh)
  result = held_out_loss(c, model, mesh)(create_state(c, model, tx, mesh))
  assert {'val/loss', 'val/ema_loss', 'val/accuracy', 'val/ema_accuracy'} <= set(result)
  assert result['val/accuracy'] in [k / 96 for k in range(97)]  # a count of 96 examples
  assert result['val/loss'] == pytest.approx(np.log(10), rel=0.2)  # an untrained 10-way classifier


@pytest.mark.parametrize('change, message', [
    ({'val.every_steps': 20}, r"data\.source='digits' has no held-out split"),
    ({'val.every_steps': 20, 'data.source': 'image_folder', 'data.path': '/x'
     }, r'give the held-out image_folder directory in config\.val\.path'),
    ({'val.every_steps': 20, 'data.source': 'tfds', 'data.name': 'cifar10'}, r'--config\.val\.split=validation'),
    ({
        'val.every_steps': 20, 'data.source': 'image_folder', 'data.path': '/x', 'val.path': '/y',
        'val.num_examples': 100, 'val.batch_size': 32
    }, r'num_examples=100 must be a multiple of config\.val\.batch_size=32'),
    ({
        'val.every_steps': 3, 'data.source': 'image_folder', 'data.path': '/x', 'val.path': '/y',
        'train.steps_per_call': 2, 'train.log_every': 2, 'train.checkpoint_every': 2
    }, r'does not divide config\.val\.every_steps=3'),
    ({'val.batch_size': 0}, r'config\.val\.batch_size=0 must be positive'),
])
def test_bad_val_configs_are_refused(change, message):
  c = tiny_unet_config()
  for path, value in change.items():
    section, field = path.split('.')
    c[section][field] = value
  with pytest.raises(ValueError, match=message):
    validate_config(c)


def test_too_many_examples_are_refused(digit_folders):
  c = folder_config(digit_folders, num_examples=320, batch_size=32)
  model = build_model(c)
  with pytest.raises(ValueError, match=r'config\.val\.num_examples=320 is more than the 297 examples'):
    held_out_loss(c, model, sharding_lib.create_mesh(c.mesh))

"""config.optim.decay: linear, cosine and EDM2's inverse square root, after a linear warmup, in closed form."""
import numpy as np
import optax
import pytest

from configs.validate import validate_config
from tests.tiny import tiny_unet_config
from training.state import learning_rate_schedule


def optim(decay, warmup=100, decay_steps=1000, lr=1e-3):
  c = tiny_unet_config()
  c.optim.update(decay=decay, warmup_steps=warmup, decay_steps=decay_steps, learning_rate=lr)
  return validate_config(c).optim


STEPS = (0, 50, 100, 250, 500, 1000, 2000, 4000)


@pytest.mark.parametrize('decay, expected', [
    ('linear', [0.0, 0.5 * 0.95, 0.9, 0.75, 0.5, 0.0, 0.0, 0.0]),
    ('cosine', [
        0.0, 0.5 * (1 + np.cos(np.pi * 0.05)) / 2, (1 + np.cos(np.pi * 0.1)) / 2,
        (1 + np.cos(np.pi * 0.25)) / 2, 0.5, 0.0, 0.0, 0.0
    ]),
    ('inverse_sqrt', [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1 / np.sqrt(2), 0.5]),
])
def test_decays_in_closed_form(decay, expected):
  lr = learning_rate_schedule(optim(decay))
  np.testing.assert_allclose([float(lr(s)) for s in STEPS], 1e-3 * np.asarray(expected), rtol=1e-5, atol=1e-10)


def test_the_optimizer_follows_the_schedule():
  """The learning rate the AdamW update uses is the schedule's: SGD-like first Adam steps move by lr."""
  import jax.numpy as jnp
  from training.state import create_optimizer
  c = optim('cosine', warmup=0, decay_steps=4)
  c.grad_clip, c.weight_decay = 0.0, 0.0
  tx = create_optimizer(c)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  moves = []
  for _ in range(4):
    updates, state = tx.update({'w': jnp.ones(())}, state, params)  # constant gradient: Adam moves by lr exactly
    params = optax.apply_updates(params, updates)
    moves.append(-float(updates['w']))
  np.testing.assert_allclose(moves, 1e-3 * (1 + np.cos(np.pi * np.arange(4) / 4)) / 2, rtol=1e-5)


def test_unknown_decay_is_refused():
  c = tiny_unet_config()
  c.optim.decay = 'exponential'
  with pytest.raises(
      ValueError, match=r"config\.optim\.decay='exponential' is not valid; choose one of 'linear', "
      r"'cosine', 'inverse_sqrt'"):
    validate_config(c)

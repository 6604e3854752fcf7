"""Training with objective 'transport' (SiT's interpolants): the loss falls, LightningDiT's cosine term is added, and
the generate function of jobs/sample.py samples the trained model with a transport sampler."""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import FLOW_TIME_SCALE
from input_pipeline import StepBatcher, create_source
from jobs.sample import generate_samples, make_generate_fn
from models import build_model
from tests.tiny import tiny_unet_config
from training import sharding as sharding_lib
from training.state import create_optimizer, create_state, state_shardings
from training.step import batch_loss, loss_inputs, make_train_step


def fixed_batch_loss(config, model):
  """jitted (params, batch) -> (loss, extras) with times and noise of a fixed key, dropout off."""
  def loss(params, batch):
    inputs = loss_inputs(batch, {'y': batch['label']}, jax.random.PRNGKey(7), None, config)
    return batch_loss(params, inputs, None, model=model, alphas_cumprod=None, config=config, train=False)

  return jax.jit(loss)


def test_transport_loss_falls_and_the_trained_model_samples():
  c = tiny_unet_config()
  c.diffusion.update(objective='transport', path='linear', prediction='velocity', cosine_loss_weight=1.0)
  c.sample.update(sampler='sde_euler', num_steps=3)
  c.optim.learning_rate = 3e-3
  mesh = sharding_lib.create_mesh(c.mesh, jax.devices()[:1])
  model, tx = build_model(c), create_optimizer(c.optim)
  _, shardings = state_shardings(c, model, tx, mesh)
  state = create_state(c, model, tx, mesh)
  step_fn = make_train_step(c, model, tx, mesh, shardings)
  batcher = StepBatcher(create_source(c.data), 64, c.seed)
  held_out, held_out_loss = batcher.batch(10_000), fixed_batch_loss(c, model)
  before, extra = held_out_loss(state.params, held_out)
  np.testing.assert_allclose(before, extra['mse_loss'] + extra['cosine_loss'], rtol=1e-6)
  for step in range(40):
    state, _ = step_fn(state, sharding_lib.host_batch_to_global(batcher.batch(step), mesh))
  after, _ = held_out_loss(state.params, held_out)
  assert after < 0.8 * before, (before, after)
  images, _ = generate_samples(c, make_generate_fn(c, model, mesh), state.ema_params, mesh, 4, seed=0)
  assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8


def test_loss_inputs_of_a_noise_prediction_carry_sits_weight_and_time():
  c = tiny_unet_config()
  c.diffusion.update(objective='transport', path='gvp', prediction='noise', transport_loss_weight='likelihood')
  batch = {'image': jnp.full((16, 8, 8, 1), 0.5), 'label': jnp.zeros((16,), jnp.int32)}
  inputs = loss_inputs(batch, {}, jax.random.PRNGKey(0), None, c)
  t = inputs['t'] / FLOW_TIME_SCALE
  assert float(t.min()) >= 1e-3 and float(t.max()) <= 1 - 1e-3
  sigma, d_sigma = jnp.cos(t * np.pi / 2), -np.pi / 2 * jnp.sin(t * np.pi / 2)
  variance = np.pi / (2 * jnp.tan(t * np.pi / 2)) * sigma**2 - sigma * d_sigma  # SiT's D_t on the GVP path
  np.testing.assert_allclose(inputs['weight'], variance / sigma**2, rtol=1e-4)
  np.testing.assert_allclose(inputs['target'], (inputs['x_t'] - jnp.sin(t * np.pi / 2)[:, None, None, None] * 0.5) /
                             sigma[:, None, None, None], rtol=1e-3, atol=1e-3)

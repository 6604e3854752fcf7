"""The training state, the optimizer, and their creation directly in their shardings."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

import sharding as sharding_lib
from checkpoints import abstract_with_shardings
from models.conditioning import dummy_condition


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 scalar: number of updates taken (or skipped)
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array                  # raw uint32[2] key; step keys are fold_in(rng, step)
  nonfinite_count: jax.Array      # updates dropped because the loss or gradient was not finite
  first_nonfinite_step: jax.Array  # -1 until one happens


def learning_rate_schedule(optim_config):
  lr, warmup = optim_config.learning_rate, optim_config.warmup_steps
  if warmup == 0:
    return optax.constant_schedule(lr)
  return optax.linear_schedule(0.0, lr, warmup)  # holds lr after warmup


def create_optimizer(optim_config):
  """AdamW with linear warmup, after optional global-norm gradient clipping."""
  adamw = optax.adamw(learning_rate_schedule(optim_config), b1=optim_config.b1, b2=optim_config.b2,
                      weight_decay=optim_config.weight_decay)
  if optim_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adamw)
  return adamw


def dummy_inputs(config, batch_size=1):
  """(x, t, cond) of the model's input shapes."""
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.channels)
  return jnp.zeros(shape, jnp.float32), jnp.zeros((batch_size,), jnp.float32), dummy_condition(config, batch_size)


def init_state(config, model, tx, seed):
  x, t, cond = dummy_inputs(config)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_rng, x, t, **cond)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), rng=state_rng, nonfinite_count=jnp.zeros((), jnp.int32),
                    first_nonfinite_step=jnp.full((), -1, jnp.int32))


def state_shardings(config, model, tx, mesh):
  """(abstract state with shardings, sharding pytree) without allocating anything."""
  abstract = jax.eval_shape(lambda: init_state(config, model, tx, config.seed))
  shardings = sharding_lib.tree_shardings(mesh, abstract)
  return abstract_with_shardings(abstract, shardings), shardings


def create_state(config, model, tx, mesh):
  """A fresh state, initialised on the devices in its final sharding."""
  _, shardings = state_shardings(config, model, tx, mesh)
  return jax.jit(lambda: init_state(config, model, tx, config.seed), out_shardings=shardings)()


def count_params(params):
  return sum(int(x.size) for x in jax.tree.leaves(params))

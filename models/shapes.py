"""A model's inputs and params as shapes: what building a train state and the weight converters need before
any weights exist."""
import jax
import jax.numpy as jnp

from models.conditioning import dummy_condition


def dummy_inputs(config, batch_size=1):
  """(x, t, cond) of the model's input shapes."""
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.channels)
  return jnp.zeros(shape, jnp.float32), jnp.zeros((batch_size,), jnp.float32), dummy_condition(config, batch_size)


def abstract_params(config, model):
  """The model's params as shapes and dtypes (jax.ShapeDtypeStruct), nothing allocated."""
  x, t, cond = dummy_inputs(config)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, **cond)['params']

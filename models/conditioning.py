"""What a model is conditioned on, as a dict of batch-first arrays passed as keyword arguments.

Class-conditional models take {'y': labels}, with index num_classes as the null label that
classifier-free guidance and label dropout use. An unconditional model takes {}.
"""
import jax
import jax.numpy as jnp
import numpy as np


def condition_from_batch(batch, config):
  return {'y': batch['label']} if config.data.num_classes > 0 else {}


def null_condition(cond, config):
  """The 'no condition' input of the same shapes (guidance's unconditional branch)."""
  return {'y': jnp.full_like(cond['y'], config.data.num_classes)} if 'y' in cond else {}


def drop_condition(rng, cond, rate, config):
  """Replaces each example's condition by the null one with probability `rate` (for guidance)."""
  if not cond or rate == 0:
    return cond
  null = null_condition(cond, config)
  batch_size = jax.tree.leaves(cond)[0].shape[0]
  drop = jax.random.bernoulli(rng, rate, (batch_size,))
  return jax.tree.map(lambda c, n: jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), n, c), cond, null)


def dummy_condition(config, batch_size=1):
  return {'y': jnp.zeros((batch_size,), jnp.int32)} if config.data.num_classes > 0 else {}


def default_conditions(num_samples, config):
  """Conditions for evaluation and grids: every class equally often (0, 1, ..., C-1, 0, ...)."""
  if config.data.num_classes > 0:
    return {'y': (np.arange(num_samples) % config.data.num_classes).astype(np.int32)}
  return {}

"""The training state, the optimizer, and their creation directly in their shardings."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from training import sharding as sharding_lib
from training.checkpoints import abstract_with_shardings
from models.shapes import dummy_inputs
from models.text_encoder import TEXT_ENCODER_NAME, pretrained_text_params


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of updates taken (or skipped)
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key; step keys are fold_in(rng, step)
  nonfinite_count: jax.Array  # updates dropped because the loss or gradient was not finite
  first_nonfinite_step: jax.Array  # -1 until one happens
  # EDM2's power-function EMAs, one params tree per config.optim.ema_sigma_rels (training/ema.py); () without them. Their own
  # checkpoint item (training/checkpoints.py), so the 'state' item keeps its layout and sampling never needs them.
  power_ema: tuple = ()


def learning_rate_schedule(optim_config):
  """Linear warmup over warmup_steps to learning_rate, then constant, or with decay_steps > 0 (optim.decay):
  'linear' down to 0 at step decay_steps (guided-diffusion's --anneal_lr: lr * (1 - step / iterations)), 'cosine'
  down to 0 there (lr * (1 + cos(pi step / decay_steps)) / 2), or 'inverse_sqrt' (EDM2: lr / sqrt(max(step /
  decay_steps, 1)), flat until decay_steps). The warmup ramp multiplies the decay."""
  lr, warmup, decay = optim_config.learning_rate, optim_config.warmup_steps, optim_config.decay_steps
  if not decay:
    return optax.constant_schedule(lr) if warmup == 0 else optax.linear_schedule(0.0, lr, warmup)  # holds lr after
  ramp = (lambda step: jnp.minimum(1.0, step / warmup)) if warmup else (lambda step: 1.0)
  fraction = {  # the names are configs.validate.LR_DECAYS, which validate_config checks
      'linear': lambda step: jnp.clip(1 - step / decay, 0.0, 1.0),
      'cosine': lambda step: 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(step / decay, 0.0, 1.0))),
      'inverse_sqrt': lambda step: jax.lax.rsqrt(jnp.maximum(step / decay, 1.0)),
  }[optim_config.decay]
  return lambda step: lr * ramp(step) * fraction(jnp.asarray(step, jnp.float32))


def create_optimizer(optim_config, frozen=()):
  """AdamW with linear warmup, after optional global-norm gradient clipping.

  frozen: names of top-level params subtrees (e.g. a pretrained text encoder) that get no update and
  no optimizer state.
  """
  adamw = optax.adamw(learning_rate_schedule(optim_config), b1=optim_config.b1, b2=optim_config.b2,
                      weight_decay=optim_config.weight_decay)
  if optim_config.grad_clip > 0:
    adamw = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adamw)
  if frozen:
    labels = lambda params: {
        k: jax.tree.map(lambda _: 'frozen' if k in frozen else 'train', v) for k, v in params.items()
    }
    return optax.multi_transform({'train': adamw, 'frozen': optax.set_to_zero()}, labels)
  return adamw


def init_state(config, model, tx, key):
  """Step 0 of a run: random params (the EMAs copies of them) and a fresh optimizer state, drawn from `key`
  (jax.random.PRNGKey(config.seed))."""
  x, t, cond = dummy_inputs(config)
  init_rng, state_rng = jax.random.split(key)
  return state_from_params(
      model.init(init_rng, x, t, **cond)['params'], tx, state_rng, len(config.optim.ema_sigma_rels))


def state_from_params(params, tx, rng, num_power_emas=0):
  """Step 0 with these params (the EMAs copies of them: a power-function EMA's first update replaces it) and a fresh
  optimizer state."""
  copy = lambda: jax.tree.map(jnp.copy, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=copy(), opt_state=tx.init(params), rng=rng,
                    nonfinite_count=jnp.zeros((), jnp.int32), first_nonfinite_step=jnp.full(
                        (), -1, jnp.int32), power_ema=tuple(copy() for _ in range(num_power_emas)))


def state_shardings(config, model, tx, mesh):
  """(abstract state with shardings, sharding pytree) without allocating anything."""
  abstract = jax.eval_shape(lambda: init_state(config, model, tx, jax.random.PRNGKey(config.seed)))
  shardings = sharding_lib.tree_shardings(mesh, abstract, config.mesh.min_shard_size)
  return abstract_with_shardings(abstract, shardings), shardings


def make_init(config, model, tx, shardings):
  """The jitted init_state(key) -> state, placed as `shardings`: the key is an argument, so runs of other seeds reuse
  the program."""
  return jax.jit(lambda key: init_state(config, model, tx, key), out_shardings=shardings)


def create_state(config, model, tx, mesh, shardings=None, init=None):
  """A fresh state of config.seed, initialised on the devices in its final sharding (`shardings`: state_shardings'
  second value, computed here if not given; `init`: make_init's program, made here if not given); a pretrained text
  encoder (config.text.encoder='clip') replaces its random initialisation."""
  if shardings is None:
    _, shardings = state_shardings(config, model, tx, mesh)
  init = make_init(config, model, tx, shardings) if init is None else init
  state = init(jax.random.PRNGKey(config.seed))
  pretrained = pretrained_text_params(config)
  if pretrained is not None:
    state = state.replace(
        params=with_subtree(state.params, TEXT_ENCODER_NAME, pretrained, shardings.params),
        ema_params=with_subtree(state.ema_params, TEXT_ENCODER_NAME, pretrained, shardings.ema_params))
  return state


def with_subtree(params, name, values, shardings):
  """params with params[name] replaced by `values` (same structure and shapes), placed as `shardings[name]`."""
  old = params[name]
  if jax.tree.structure(old) != jax.tree.structure(values) or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(values))):
    raise ValueError(f'pretrained {name} parameters do not match the model\'s')
  new = jax.tree.map(lambda v, s, o: jax.device_put(jnp.asarray(v, o.dtype), s), values, shardings[name], old)
  return {**params, name: new}


def count_params(params):
  return sum(int(x.size) for x in jax.tree.leaves(params))

"""Classifier-free guidance (Ho & Salimans, 2022), one forward over the conditional and null batch, and autoguidance
(Karras et al., 2024): guidance by a weaker model of the same data and parameterisation."""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class Autoguide(NamedTuple):
  """Autoguidance's weak model: apply_fn(x, t) -> its output for the batch's conditions (a smaller or less trained
  version of the model), its scale w (may be traced), and whether its output ends in learned-variance channels."""
  apply_fn: Callable
  scale: Any
  learned_variance: bool = False


def prediction_and_variance(out, learned_variance):
  """(prediction, learned-variance values or None): with learned variances, the second half of the channels."""
  return tuple(jnp.split(out, 2, axis=-1)) if learned_variance else (out, None)


def classifier_free_guidance(apply_fn, cond, null_cond, scale, interval=None, learned_variance=False, channels=None,
                             autoguide=None):
  """Wraps apply_fn(x, t, cond) into model_fn(x, t) = u + scale (c - u) + (w - 1) (c - b).

  c, u: the outputs for cond and null_cond (pytrees of batch-first arrays, e.g. {'y': labels}); null_cond None
  (an unconditional model): no classifier-free guidance, u + scale (c - u) read as c. b: the output of
  `autoguide` (an Autoguide, or None: no term), whose scale w gives, without classifier-free guidance,
  b + w (c - b). Both scales may be traced, so sweeping them does not recompile; at scale 1 only the conditional
  batch runs. The guidance is linear in the outputs, so for models of one parameterisation it is the same
  combination of their denoisers (x0 estimates).
  interval=(t_lo, t_hi) applies both guidances only for network times in that closed range and plain
  conditional outputs elsewhere (Kynkäänniemi et al., 2024).
  learned_variance: the output's second half of channels are variance values (learned_variance.py); only
  the prediction half is guided, the variance is the conditional one (as DiT and ADM sample).
  channels: guide only the first `channels` channels of the prediction and keep the conditional prediction
  for the rest; DiT's sampler guides 3 of its 4 latent channels (`forward_with_cfg`), which its published
  FIDs reflect. None guides them all.
  """
  def scale_at(value, t, like):
    s = jnp.asarray(value, like.dtype)
    if interval is None:
      return s
    inside = (t >= interval[0]) & (t <= interval[1])
    return jnp.where(inside, s, 1.0).reshape((-1,) + (1,) * (like.ndim - 1))

  def combine(x, t, out, null_out):
    c, c_values = prediction_and_variance(out, learned_variance)
    guided = c
    if null_out is not None:
      u = prediction_and_variance(null_out, learned_variance)[0]
      guided = u + scale_at(scale, t, c) * (c - u)
    if autoguide is not None:
      b = prediction_and_variance(autoguide.apply_fn(x, t), autoguide.learned_variance)[0]
      guided = guided + (scale_at(autoguide.scale, t, c) - 1) * (c - b)
    if channels is not None:
      guided = jnp.concatenate([guided[..., :channels], c[..., channels:]], axis=-1)
    return guided if c_values is None else jnp.concatenate([guided, c_values], axis=-1)

  def guided(x, t):
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, null_cond)
    out, null_out = jnp.split(apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both), 2)
    return combine(x, t, out, null_out)

  def conditional(x, t):
    out = apply_fn(x, t, cond)
    return out if autoguide is None else combine(x, t, out, None)

  if null_cond is None:
    return conditional
  # Scale 1 is the conditional output: skip the null batch (half the network's work) rather than compute
  # u + 1 * (c - u). A known scale picks its branch here; a traced one at run time, so it stays traced.
  try:
    known = float(scale)
  except TypeError:  # a tracer (jax's ConcretizationTypeError is a TypeError)
    return lambda x, t: jax.lax.cond(jnp.asarray(scale) == 1, conditional, guided, x, t)
  return conditional if known == 1 else guided

"""Classifier-free guidance (Ho & Salimans, 2022): one forward over the conditional and null batch."""
import jax
import jax.numpy as jnp


def classifier_free_guidance(apply_fn, cond, null_cond, scale, interval=None, learned_variance=False, channels=None):
  """Wraps apply_fn(x, t, cond) into model_fn(x, t) = u + scale * (c - u).

  cond and null_cond are pytrees of batch-first arrays (e.g. {'y': labels}); scale may be a traced
  scalar, so sweeping it does not recompile; at scale 1 only the conditional batch runs.
  interval=(t_lo, t_hi) applies guidance only for network times in that closed range and plain
  conditional outputs elsewhere (Kynkäänniemi et al., 2024).
  learned_variance: the output's second half of channels are variance values (learned_variance.py); only
  the prediction half is guided, the variance is the conditional one (as DiT and ADM sample).
  channels: guide only the first `channels` channels of the prediction and keep the conditional prediction
  for the rest; DiT's sampler guides 3 of its 4 latent channels (`forward_with_cfg`), which its published
  FIDs reflect. None guides them all.
  """
  def guided(x, t):
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, null_cond)
    out = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    c, u = jnp.split(out, 2)
    s = jnp.asarray(scale, out.dtype)
    if interval is not None:
      inside = (t >= interval[0]) & (t <= interval[1])
      s = jnp.where(inside, s, 1.0).reshape((-1,) + (1,) * (x.ndim - 1))
    c_values = None
    if learned_variance:
      (c, c_values), (u, _) = jnp.split(c, 2, axis=-1), jnp.split(u, 2, axis=-1)
    guided = u + s * (c - u)
    if channels is not None:
      guided = jnp.concatenate([guided[..., :channels], c[..., channels:]], axis=-1)
    return guided if c_values is None else jnp.concatenate([guided, c_values], axis=-1)

  # Scale 1 is the conditional output: skip the null batch (half the network's work) rather than compute
  # u + 1 * (c - u). A known scale picks its branch here; a traced one at run time, so it stays traced.
  conditional = lambda x, t: apply_fn(x, t, cond)
  try:
    known = float(scale)
  except TypeError:  # a tracer (jax's ConcretizationTypeError is a TypeError)
    return lambda x, t: jax.lax.cond(jnp.asarray(scale) == 1, conditional, guided, x, t)
  return conditional if known == 1 else guided

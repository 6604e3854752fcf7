"""Classifier-free guidance (Ho & Salimans, 2022): one forward over the conditional and null batch."""
import jax
import jax.numpy as jnp


def classifier_free_guidance(apply_fn, cond, null_cond, scale, interval=None, learned_variance=False):
  """Wraps apply_fn(x, t, cond) into model_fn(x, t) = u + scale * (c - u).

  cond and null_cond are pytrees of batch-first arrays (e.g. {'y': labels}); scale may be a traced
  scalar, so sweeping it does not recompile. interval=(t_lo, t_hi) applies guidance only for network
  times in that closed range and plain conditional outputs elsewhere (Kynkäänniemi et al., 2024).
  learned_variance: the output's second half of channels are variance values (learned_variance.py); only
  the prediction half is guided, the variance is the conditional one (as DiT and ADM sample).
  """
  def model_fn(x, t):
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, null_cond)
    out = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    c, u = jnp.split(out, 2)
    s = jnp.asarray(scale, out.dtype)
    if interval is not None:
      inside = (t >= interval[0]) & (t <= interval[1])
      s = jnp.where(inside, s, 1.0).reshape((-1,) + (1,) * (x.ndim - 1))
    if learned_variance:
      (c, c_values), (u, _) = jnp.split(c, 2, axis=-1), jnp.split(u, 2, axis=-1)
      return jnp.concatenate([u + s * (c - u), c_values], axis=-1)
    return u + s * (c - u)
  return model_fn

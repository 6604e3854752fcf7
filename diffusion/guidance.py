"""Classifier-free guidance (Ho & Salimans, 2022): one forward over the conditional and null batch."""
import jax
import jax.numpy as jnp


def classifier_free_guidance(apply_fn, cond, null_cond, scale, interval=None):
  """Wraps apply_fn(x, t, cond) into model_fn(x, t) = u + scale * (c - u).

  cond and null_cond are pytrees of batch-first arrays (e.g. {'y': labels}); scale may be a traced
  scalar, so sweeping it does not recompile. interval=(t_lo, t_hi) applies guidance only for network
  times in that closed range and plain conditional outputs elsewhere (Kynkäänniemi et al., 2024).
  """
  def model_fn(x, t):
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, null_cond)
    out = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    c, u = jnp.split(out, 2)
    s = jnp.asarray(scale, out.dtype)
    if interval is not None:
      inside = (t >= interval[0]) & (t <= interval[1])
      s = jnp.where(inside, s, 1.0).reshape((-1,) + (1,) * (x.ndim - 1))
    return u + s * (c - u)
  return model_fn

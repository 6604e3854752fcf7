"""Euler and Heun samplers for flow matching (rectified flow).

x_t = (1 - t) x_0 + t eps, and the network predicts the velocity v = eps - x_0 = dx_t/dt at network
time t * FLOW_TIME_SCALE. Sampling integrates dx/dt = v from t = 1 (noise) to t = 0 (data).
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.objectives import FLOW_TIME_SCALE


def flow_times(num_steps, shift=1.0):
  """num_steps + 1 decreasing times from 1 to 0: uniform, then optionally shifted towards the noise end
  by t -> shift t / (1 + (shift - 1) t) (SD3's timestep shift, Esser et al., 2024); float64."""
  t = np.linspace(1.0, 0.0, num_steps + 1)
  return shift * t / (1 + (shift - 1) * t)


def flow_sample(model_fn, noise, num_steps, order=2, shift=1.0):
  """Integrates the flow ODE from noise over flow_times(num_steps, shift); returns the x_0 estimate.

  order=1 is Euler (num_steps network calls). order=2 is Heun's method on every step but the last
  (2 num_steps - 1 calls); the last step is an Euler step, which lands on x - t v, the x_0 estimate,
  as in the EDM sampler.
  """
  if order not in (1, 2):
    raise ValueError(f'order must be 1 (Euler) or 2 (Heun), got {order}')
  times = jnp.asarray(flow_times(num_steps, shift), jnp.float32)

  def velocity(x, t):
    return model_fn(x, jnp.full((x.shape[0],), t * FLOW_TIME_SCALE, jnp.float32))

  def step(i, x):
    t, t_next = times[i], times[i + 1]
    v = velocity(x, t)
    x_next = x + (t_next - t) * v
    if order == 2:
      x_next = x + (t_next - t) * (v + velocity(x_next, t_next)) / 2
    return x_next

  x = jax.lax.fori_loop(0, num_steps - 1, step, noise)
  return x - times[num_steps - 1] * velocity(x, times[num_steps - 1])

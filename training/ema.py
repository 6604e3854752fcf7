"""Moving averages of the weights: the constant-decay EMA, and EDM2's power-function EMA with post-hoc
reconstruction (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 3).

A power-function EMA after update t (counted from 1) is  ema_t = beta_t ema_{t-1} + (1 - beta_t) theta_t  with
beta_t = (1 - 1/t)^(gamma + 1). It weights the params theta_tau of update tau by the integral over (tau - 1, tau] of
the profile p_t(u) = (gamma + 1) u^gamma / t^(gamma + 1) on [0, t], so it always averages the same fraction of the run:
the profile's standard deviation relative to t is sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))).

Training tracks a few profiles (config.optim.ema_sigma_rels; EDM2 tracks 0.05 and 0.10) and writes them every
config.train.ema_snapshot_every steps to <workdir>/ema_snapshots, which are never deleted. Sampling and evaluation
with config.sample.ema_sigma_rel > 0 then rebuild the EMA of that width at a snapshot step (config.sample.ema_step)
as the combination of the snapshots up to it whose profiles are nearest to the wanted one in L2 (least squares
over the closed-form inner products of the profiles, with weights summing to 1), so the EMA length is chosen after
training, without retraining.
"""
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from training.checkpoints import CheckpointStore

SNAPSHOT_DIR = 'ema_snapshots'
# gamma = 0 (an average of the whole run with equal weights) has the widest profile of gamma >= 0.
MAX_SIGMA_REL = math.sqrt(1 / 12)
POOR_FIT = 0.05  # relative L2 error of a rebuilt profile above which the rebuild is logged as a warning


def ema_decay(optim_config, step):
  """The constant-decay EMA's decay at `step` (ema_warmup: min(decay, (1 + step) / (10 + step)))."""
  decay = optim_config.ema_decay
  if optim_config.ema_warmup:
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jnp.asarray(decay, jnp.float32)


def sigma_rel_to_gamma(sigma_rel):
  """The exponent gamma of the profile of relative width sigma_rel: the real root of
  gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0, the width formula solved for gamma."""
  if not 0 < sigma_rel < MAX_SIGMA_REL:
    raise ValueError(f'sigma_rel={sigma_rel} must be in (0, {MAX_SIGMA_REL:.4f})')
  inv = sigma_rel**-2
  return float(np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv]).real.max())


def gamma_to_sigma_rel(gamma):
  return math.sqrt((gamma + 1) / ((gamma + 2)**2 * (gamma + 3)))


def power_ema_weight(gamma, t):
  """1 - beta_t, the weight of the params of update t (t >= 1; 1 at t = 1), as -expm1((gamma + 1) log1p(-1/t)):
  float32 1 - (1 - 1/t)^(gamma + 1) would lose ~3% of it to rounding at t = 10^6."""
  t = jnp.asarray(t, jnp.float32)
  return -jnp.expm1((gamma + 1) * jnp.log1p(-1.0 / t))


def update_power_emas(power_emas, params, gammas, step):
  """The power-function EMAs (a tuple, one params tree per gamma) after the update that made `params`, the
  (step + 1)-th update of the run."""
  t = step + 1
  return tuple(
      jax.tree.map(lambda e, p, w=power_ema_weight(gamma, t): e + w * (p - e), ema, params)
      for ema, gamma in zip(power_emas, gammas))


def profile_inner_products(t_a, gamma_a, t_b, gamma_b):
  """<p_a, p_b> = integral of p_a(u) p_b(u) du for profiles ending at t_a and t_b (arrays broadcast): with
  t_a <= t_b it is (gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1) (t_a / t_b)^gamma_b / t_b, a form with no
  powers of t large enough to overflow."""
  t_a, gamma_a, t_b, gamma_b = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b)))
  a_first = t_a <= t_b
  ratio = np.where(a_first, t_a / t_b, t_b / t_a)
  exponent = np.where(a_first, gamma_b, gamma_a)
  return ((gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)) * ratio**exponent / np.maximum(t_a, t_b)


def posthoc_coefficients(times, gammas, target_time, target_gamma):
  """(coefficients, relative error): the combination sum_i c_i p_i of the snapshot profiles (ending at times[i],
  exponent gammas[i]) nearest the target profile in L2, and its distance from the target relative to the target's
  norm (0: the target is one of the snapshots).

  The coefficients sum to 1 (least squares with that constraint, through its KKT system), so params that stop
  moving are rebuilt exactly: EDM2's unconstrained solution sums to 1 only as closely as it fits, and its deficit
  scales every param (1.4% at sigma_rel 0.25 from 20 snapshots, for 2% more profile error here)."""
  times, gammas = np.asarray(times, np.float64), np.asarray(gammas, np.float64)
  n = len(times)
  gram = profile_inner_products(times[:, None], gammas[:, None], times[None], gammas[None])
  rhs = profile_inner_products(times, gammas, target_time, target_gamma)
  kkt = np.block([[gram, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
  coefficients = np.linalg.lstsq(kkt, np.append(rhs, 1.0), rcond=None)[0][:n]
  target_norm = profile_inner_products(target_time, target_gamma, target_time, target_gamma)
  residual = coefficients @ gram @ coefficients - 2 * coefficients @ rhs + target_norm
  return coefficients, float(np.sqrt(max(residual, 0.0) / target_norm))


def power_ema_sigma_rels(config):
  return tuple(float(s) for s in config.optim.ema_sigma_rels)


def snapshot_store(workdir):
  return CheckpointStore(workdir, keep=None, name=SNAPSHOT_DIR)


def save_snapshot(store, step, state, sigma_rels):
  """The run's power-function EMAs at `step` as snapshot `step` (written again, identical, after a resume)."""
  store.save(step, {'power_ema': list(state.power_ema)}, {'sigma_rels': list(sigma_rels)})


def reconstruct(config, workdir, abstract_params, mesh):
  """(params, step): the power-function EMA of width config.sample.ema_sigma_rel at snapshot config.sample.ema_step
  (0: the newest), rebuilt from the snapshots of workdir up to that step, placed as abstract_params' shardings."""
  sigma_rel, wanted = config.sample.ema_sigma_rel, config.sample.ema_step
  directory = os.path.join(workdir, SNAPSHOT_DIR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'config.sample.ema_sigma_rel={sigma_rel} rebuilds an EMA from the power-function EMA snapshots in '
        f'{directory}, which does not exist: train with --config.optim.ema_sigma_rels=0.05,0.1 and '
        '--config.train.ema_snapshot_every=N, or sample with --config.sample.ema_sigma_rel=0 (the run\'s EMA)')
  store = snapshot_store(workdir)
  try:
    steps = store.steps()
    if not steps:
      raise FileNotFoundError(f'{directory} holds no snapshot yet; train until config.train.ema_snapshot_every')
    step = wanted or steps[-1]
    if step not in steps:
      raise ValueError(f'config.sample.ema_step={wanted} is not a snapshot step; {directory} holds steps '
                       f'{_listed_steps(steps)}')
    used = [s for s in steps if s <= step]
    profiles = {s: store.read_signature(s)['sigma_rels'] for s in used}
    times = [s for s in used for _ in profiles[s]]
    gammas = [sigma_rel_to_gamma(r) for s in used for r in profiles[s]]
    coefficients, error = posthoc_coefficients(times, gammas, step, sigma_rel_to_gamma(sigma_rel))
    logging.log(
        logging.WARNING if error > POOR_FIT else logging.INFO,
        'post-hoc EMA sigma_rel=%g at step %d from %d snapshots (%d profiles): relative L2 error of its '
        'profile %.2e, largest |coefficient| %.3g%s', sigma_rel, step, len(used), len(times), error,
        np.abs(coefficients).max(),
        '; a poor fit: track a width nearer this one, or snapshot more often' if error > POOR_FIT else '')
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    accumulate = jax.jit(
        lambda total, snapshot, c: jax.tree.map(lambda acc, *emas: acc + sum(c[i] * e for i, e in enumerate(emas)),
                                                total, *snapshot),
        in_shardings=(_shardings(abstract_params), None, replicated), out_shardings=_shardings(abstract_params),
        donate_argnums=0)
    total = jax.jit(lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract_params),
                    out_shardings=_shardings(abstract_params))()
    offset = 0
    for s in used:
      count = len(profiles[s])
      snapshot = store.restore(s, {'power_ema': [abstract_params] * count})['power_ema']
      total = accumulate(total, snapshot, jnp.asarray(coefficients[offset:offset + count], jnp.float32))
      offset += count
    return total, step
  finally:
    store.close()


def _shardings(abstract_tree):
  return jax.tree.map(lambda a: a.sharding, abstract_tree)


def _listed_steps(steps, shown=6):
  if len(steps) <= shown:
    return ', '.join(map(str, steps))
  return f'{", ".join(map(str, steps[:3]))}, ..., {", ".join(map(str, steps[-3:]))} ({len(steps)} in all)'


def check_ema_config(config):
  """The tracked and wanted profiles are valid widths, and snapshots are due on call boundaries."""
  sigma_rels, wanted = power_ema_sigma_rels(config), config.sample.ema_sigma_rel
  every, step = config.train.ema_snapshot_every, config.sample.ema_step
  widths = [('optim.ema_sigma_rels', value) for value in sigma_rels] + [('sample.ema_sigma_rel', wanted)] * bool(wanted)
  for field, value in widths:
    if not 0 < value < MAX_SIGMA_REL:
      raise ValueError(f'config.{field} has {value}: a power-function EMA width sigma_rel must be in (0, '
                       f'{MAX_SIGMA_REL:.4f}) (EDM2 tracks 0.05 and 0.10; {MAX_SIGMA_REL:.4f} averages the whole '
                       'run evenly)')
  if len(set(sigma_rels)) != len(sigma_rels):
    raise ValueError(f'config.optim.ema_sigma_rels={sigma_rels} lists a width twice')
  if sigma_rels and every <= 0:
    raise ValueError(f'config.optim.ema_sigma_rels={sigma_rels} needs config.train.ema_snapshot_every > 0, the '
                     'steps between snapshots (EDM2 writes about 250 in a run)')
  if every < 0 or (every and not sigma_rels):
    raise ValueError(f'config.train.ema_snapshot_every={every} snapshots the power-function EMAs: set '
                     'config.optim.ema_sigma_rels (e.g. 0.05,0.1), or leave it at 0')
  if every % config.train.steps_per_call:
    raise ValueError(f'config.train.steps_per_call={config.train.steps_per_call} does not divide '
                     f'config.train.ema_snapshot_every={every}: snapshots are written between calls')
  if wanted and not config.sample.use_ema:
    raise ValueError(f'config.sample.ema_sigma_rel={wanted} samples a rebuilt EMA, and config.sample.use_ema=False '
                     'asks for the raw params: set one of them')
  if step < 0 or (step and not wanted):
    raise ValueError(f'config.sample.ema_step={step} is the snapshot step of a rebuilt EMA: it must be >= 0, and '
                     'needs config.sample.ema_sigma_rel > 0')

"""EDM2's power-function EMA (ema.py): the profile math in closed form, the update as the profile's integrals, the
post-hoc reconstruction against directly tracked EMAs, and the snapshots of a training run."""
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from scipy import integrate

from training import ema
from jobs import train
from jobs import restore as restore_job
from training.checkpoints import CheckpointStore
from configs.validate import validate_config
from tests.training.test_reliability import restore
from tests.tiny import tiny_unet_config


def test_sigma_rel_and_gamma_are_inverse_with_edm2s_values():
  # EDM2 (Karras et al. 2024, sec. 3.1): sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94.
  assert ema.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
  assert ema.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
  for sigma_rel in (0.01, 0.05, 0.1, 0.2, 0.28):
    assert ema.gamma_to_sigma_rel(ema.sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-10)
  assert ema.gamma_to_sigma_rel(0.0) == pytest.approx(ema.MAX_SIGMA_REL)
  with pytest.raises(ValueError, match='sigma_rel=0.3'):
    ema.sigma_rel_to_gamma(0.3)


@pytest.mark.parametrize('sigma_rel', [0.05, 0.15])
def test_the_update_weights_each_step_by_the_integral_of_its_profile(sigma_rel):
  # theta_tau = the tau-th basis vector, so the EMA after T updates is the vector of the weights of the updates.
  T, gamma = 40, ema.sigma_rel_to_gamma(sigma_rel)
  averages = (jnp.full((T,), 7.0),)  # any start: the first update's weight is 1
  for step in range(T):
    averages = ema.update_power_emas(averages, jnp.eye(T)[step], [gamma], step)
  tau = np.arange(1, T + 1)
  expected = (tau / T)**(gamma + 1) - ((tau - 1) / T)**(gamma + 1)  # integral of p_T over (tau - 1, tau]
  np.testing.assert_allclose(averages[0], expected, rtol=2e-5, atol=1e-7)
  assert float(averages[0].sum()) == pytest.approx(1.0, abs=1e-5)
  mean = (tau - 0.5) @ expected / T  # the profile's centre: (gamma + 1) / (gamma + 2) of the run
  assert mean == pytest.approx((gamma + 1) / (gamma + 2), abs=1 / T)


def test_the_update_weight_keeps_float32_accuracy_late_in_a_run():
  gamma = ema.sigma_rel_to_gamma(0.05)
  for t in (1e3, 1e6, 3e7):
    exact = -math.expm1((gamma + 1) * math.log1p(-1 / t))  # float64
    assert float(ema.power_ema_weight(gamma, t)) == pytest.approx(exact, rel=1e-5)
  assert float(ema.power_ema_weight(gamma, 1)) == 1.0


@pytest.mark.parametrize('t_a,sigma_a,t_b,sigma_b', [(100, 0.05, 100, 0.05), (60, 0.1, 100, 0.05), (100, 0.02, 30, 0.2),
                                                     (1e6, 0.05, 2e6, 0.1)])
def test_profile_inner_products_match_quadrature(t_a, sigma_a, t_b, sigma_b):
  g_a, g_b = ema.sigma_rel_to_gamma(sigma_a), ema.sigma_rel_to_gamma(sigma_b)
  profile = lambda u, t, g: (g + 1) * u**g / t**(g + 1)
  numeric = integrate.quad(lambda u: profile(u, t_a, g_a) * profile(u, t_b, g_b), 0, min(t_a, t_b), limit=200)[0]
  assert ema.profile_inner_products(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-8)
  assert ema.profile_inner_products(t_b, g_b, t_a, g_a) == pytest.approx(numeric, rel=1e-8)


def tracked(trajectory, sigma_rels):
  """{step: tuple of EMAs} of a [T, d] params trajectory under update_power_emas."""
  gammas = [ema.sigma_rel_to_gamma(s) for s in sigma_rels]
  averages, history = tuple(jnp.zeros(trajectory.shape[1]) for _ in gammas), {}
  for step in range(len(trajectory)):
    averages = ema.update_power_emas(averages, trajectory[step], gammas, step)
    history[step + 1] = averages
  return history


def test_reconstruction_matches_directly_tracked_emas():
  """EDM2's recipe: track sigma_rel 0.05 and 0.10, snapshot every 10 steps; any width at a snapshot step is then the
  least-squares combination of the snapshots, here checked against EMAs of those widths tracked all along."""
  T, every, tracked_widths = 200, 10, (0.05, 0.10)
  walk = jnp.asarray(np.cumsum(np.random.default_rng(0).normal(size=(T, 16)), axis=0), jnp.float32)
  history = tracked(walk, tracked_widths)
  for target_step in (T, 120):
    steps = list(range(every, target_step + 1, every))
    snapshots = [history[s][k] for s in steps for k in range(2)]
    times = [s for s in steps for _ in tracked_widths]
    gammas = [ema.sigma_rel_to_gamma(w) for _ in steps for w in tracked_widths]
    for width, max_error in ((0.05, 1e-6), (0.10, 1e-6), (0.07, 0.01), (0.15, 0.02), (0.03, 0.07)):
      coefficients, error = ema.posthoc_coefficients(times, gammas, target_step, ema.sigma_rel_to_gamma(width))
      rebuilt = sum(c * s for c, s in zip(coefficients, snapshots))
      direct = tracked(walk[:target_step], (width,))[target_step][0]
      spread = float(jnp.abs(walk[:target_step] - direct).max())  # how far the params move around the average
      assert error < max_error, (width, error)
      np.testing.assert_allclose(rebuilt, direct, atol=max(error, 1e-5) * spread)
      if width in tracked_widths:  # a tracked profile is its own snapshot
        assert np.abs(coefficients).argmax() == steps.index(target_step) * 2 + tracked_widths.index(width)


def max_difference(a, b):
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def power_ema_config(**overrides):
  c = tiny_unet_config(
      **{'train__num_steps': 7, 'train__checkpoint_every': 7, 'train__ema_snapshot_every': 2, **overrides})
  c.optim.ema_sigma_rels = (0.05, 0.1)
  return c


def test_training_snapshots_and_sampling_rebuilds_them(tmp_path):
  c, workdir = power_ema_config(), str(tmp_path)
  train.train_and_evaluate(c, workdir)
  state, step = restore(c, workdir)
  assert step == 7 and len(state.power_ema) == 2
  store = CheckpointStore(workdir, keep=None, name=ema.SNAPSHOT_DIR)
  assert store.steps() == [2, 4, 6, 7]  # every 2 steps, and the last
  snapshot_4 = store.restore(4, {'power_ema': [state.params] * 2})['power_ema']
  store.close()
  assert max_difference(snapshot_4[0], state.power_ema[0]) > 1e-4  # the EMAs moved between steps 4 and 7

  c.sample.ema_sigma_rel = 0.05  # a tracked width at the newest snapshot: that snapshot itself
  _, params, sampled_step, _ = restore_job.restore_for_inference(c, workdir)
  assert sampled_step == 7 and max_difference(params, state.power_ema[0]) < 1e-5
  c.sample.ema_sigma_rel, c.sample.ema_step = 0.1, 4
  _, params, sampled_step, _ = restore_job.restore_for_inference(c, workdir)
  assert sampled_step == 4 and max_difference(params, snapshot_4[1]) < 1e-5
  c.sample.ema_sigma_rel, c.sample.ema_step = 0.07, 6  # another width: the snapshots up to step 6, combined
  _, params, sampled_step, _ = restore_job.restore_for_inference(c, workdir)
  store = CheckpointStore(workdir, keep=None, name=ema.SNAPSHOT_DIR)
  snapshots = [ema_k for s in (2, 4, 6) for ema_k in store.restore(s, {'power_ema': [state.params] * 2})['power_ema']]
  store.close()
  gammas = [ema.sigma_rel_to_gamma(w) for w in (0.05, 0.1)] * 3
  coefficients, _ = ema.posthoc_coefficients([2, 2, 4, 4, 6, 6], gammas, 6, ema.sigma_rel_to_gamma(0.07))
  combined = jax.tree.map(lambda *xs: sum(c * np.asarray(x) for c, x in zip(coefficients, xs)), *snapshots)
  assert sampled_step == 6 and max_difference(params, combined) < 1e-5

  plain = tiny_unet_config()  # a config without power-function EMAs samples the run's EMA
  _, params, sampled_step, _ = restore_job.restore_for_inference(plain, workdir)
  assert sampled_step == 7 and max_difference(params, state.ema_params) == 0

  c.sample.ema_step = 5
  c.sample.ema_sigma_rel = 0.07
  with pytest.raises(ValueError, match='ema_step=5 is not a snapshot step.*2, 4, 6, 7'):
    restore_job.restore_for_inference(c, workdir)
  changed = power_ema_config(train__num_steps=9)
  changed.optim.ema_sigma_rels = (0.05,)
  with pytest.raises(ValueError, match='ema_sigma_rels: checkpoint has \\[0.05, 0.1\\], config has \\[0.05\\]'):
    train.train_and_evaluate(changed, workdir)


def test_sampling_a_post_hoc_ema_of_a_run_without_snapshots_says_how_to_get_them(tmp_path):
  c = tiny_unet_config(train__num_steps=2)
  train.train_and_evaluate(c, str(tmp_path))
  c.sample.ema_sigma_rel = 0.05
  with pytest.raises(FileNotFoundError, match='ema_snapshots, which does not exist: train with '
                     '--config.optim.ema_sigma_rels'):
    restore_job.restore_for_inference(c, str(tmp_path))


@flax.struct.dataclass
class TrainStateBeforePowerEMAs:  # train_state.TrainState as it was
  step: Any
  params: Any
  ema_params: Any
  opt_state: Any
  rng: Any
  nonfinite_count: Any
  first_nonfinite_step: Any


def test_checkpoints_written_before_power_emas_existed_still_restore(tmp_path):
  """The 'state' item used to be the TrainState itself; it is now its fields but power_ema, the same layout."""
  c = tiny_unet_config()
  state, _ = restore_fresh(c)
  manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
  old = TrainStateBeforePowerEMAs(**{f: getattr(state, f) for f in TrainStateBeforePowerEMAs.__dataclass_fields__})
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(old), meta=ocp.args.JsonSave({})))
  manager.wait_until_finished()
  manager.close()
  restored, step = restore(c, str(tmp_path))
  assert step == 3 and restored.power_ema == () and max_difference(restored.params, state.params) == 0


def restore_fresh(config):
  from models import build_model
  from training.state import create_optimizer, create_state
  from training import sharding as sharding_lib
  model, tx = build_model(config), create_optimizer(config.optim)
  return create_state(config, model, tx, sharding_lib.create_mesh(config.mesh)), model


@pytest.mark.parametrize('fields,match', [
    ({'optim.ema_sigma_rels': (0.05, 0.1)}, 'needs config.train.ema_snapshot_every > 0'),
    ({'train.ema_snapshot_every': 100}, 'ema_snapshot_every=100 snapshots the power-function EMAs'),
    ({'optim.ema_sigma_rels': (0.05, 0.3), 'train.ema_snapshot_every': 100}, 'optim.ema_sigma_rels has 0.3'),
    ({'optim.ema_sigma_rels': (0.05, 0.05), 'train.ema_snapshot_every': 100}, 'lists a width twice'),
    ({'sample.ema_sigma_rel': -0.1}, 'sample.ema_sigma_rel has -0.1'),
    ({'sample.ema_sigma_rel': 0.1, 'sample.use_ema': False}, 'use_ema=False asks for the raw params'),
    ({'sample.ema_step': 100}, 'needs config.sample.ema_sigma_rel > 0'),
    ({
        'optim.ema_sigma_rels': (0.05,), 'train.ema_snapshot_every': 3, 'train.steps_per_call': 2, 'train.num_steps': 4,
        'train.log_every': 2, 'train.checkpoint_every': 2
    }, 'does not divide'),
])
def test_validate_config_names_bad_power_ema_fields(fields, match):
  c = tiny_unet_config(**{path.replace('.', '__'): value for path, value in fields.items()})
  with pytest.raises(ValueError, match=match):
    validate_config(c)

"""The train step: a pure function of (state, batch), jitted with explicit shardings.

Everything it needs from the config is bound before jitting. `train_steps` runs k steps in one program (a scan
over stacked batches) for config.train.steps_per_call; `accumulated_loss_and_grads` splits a batch into
config.train.grad_accum_steps microbatches.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from diffusion.classifier_guidance import classifier_loss
from diffusion.learned_variance import hybrid_loss_per_example
from diffusion.objectives import loss_weight, mse_per_example, noised_batch
from diffusion.schedules import alphas_cumprod_for
from diffusion.transport import cosine_loss, transport_batch
from models.conditioning import condition_from_batch, drop_condition, is_classifier, null_condition
from training import ema as ema_lib
from training import sharding as sharding_lib
from training.repa import encoder_images, repa_inputs, repa_loss_per_example
from training.state import learning_rate_schedule


def loss_inputs(batch, cond, noise_rng, alphas_cumprod, config):
  """What the loss of a batch needs besides the params: the noised images, times, condition, and the targets and
  weights (a classifier: the labels), drawn from noise_rng."""
  x0 = batch['image'].astype(jnp.float32)  # latents arrive in their stored float16
  if config.diffusion.objective == 'transport':  # SiT's interpolants, targets and weights (diffusion/transport.py)
    x_t, t, target, weight = transport_batch(noise_rng, x0, config.diffusion)
  else:
    x_t, t, target = noised_batch(noise_rng, x0, alphas_cumprod, config.diffusion)
    weight = loss_weight(config.diffusion.loss_weighting, config.diffusion.objective, alphas_cumprod,
                         t.astype(jnp.int32), config.diffusion.min_snr_gamma)
  inputs = {'x_t': x_t, 't': t, 'cond': cond}
  if is_classifier(config):
    inputs['label'] = batch['label']
  else:
    inputs.update(target=target, x0=x0, weight=weight)
  return inputs


def batch_loss(params, inputs, dropout_rng, *, model, alphas_cumprod, config, train=True):
  """(mean loss, extra metrics) of a (micro)batch of noised examples: `inputs` from `loss_inputs`; with
  train=False the model's dropout is off (dropout_rng unused). With REPA's inputs (training/repa.repa_inputs) the
  weighted REPA loss is added, and both parts are logged ('diffusion_loss', 'repa_loss')."""
  repa = 'repa_target' in inputs
  out = model.apply({'params': params}, inputs['x_t'], inputs['t'], **inputs['cond'], train=train,
                    rngs={'dropout': dropout_rng} if train else {}, mutable=['intermediates'] if repa else False)
  if not repa:
    return output_loss(out, inputs, alphas_cumprod, config)
  out, projected = out[0], out[1]['intermediates']['repa'][0]
  loss, extra = output_loss(out, inputs, alphas_cumprod, config)
  per_example = repa_loss_per_example(projected, inputs['repa_target'])
  extra = {**extra, 'diffusion_loss': loss, 'repa_loss': per_example.mean()}
  return loss + (inputs['repa_weight'] * per_example).mean(), extra


def output_loss(out, inputs, alphas_cumprod, config):
  """(mean loss, extra metrics) of the model's output `out` for `inputs`."""
  if is_classifier(config):  # ADM's noisy classifier (classifier_train.py): uniform timesteps, cross-entropy
    loss, correct = classifier_loss(out, inputs['label'])
    return loss.mean(), {'accuracy': correct.mean()}
  if config.diffusion.learn_sigma:  # Improved DDPM's hybrid loss (diffusion/learned_variance.py)
    loss, vlb = hybrid_loss_per_example(config.diffusion.objective, out, inputs['target'], inputs['x0'], inputs['x_t'],
                                        inputs['t'].astype(jnp.int32), alphas_cumprod, inputs['weight'])
    return loss.mean(), {'vlb': vlb.mean()}
  loss = (inputs['weight'] * mse_per_example(out, inputs['target'])).mean()
  if config.diffusion.cosine_loss_weight:  # LightningDiT's velocity-direction term (objective 'transport')
    cosine = cosine_loss(out, inputs['target']).mean()
    return loss + config.diffusion.cosine_loss_weight * cosine, {'mse_loss': loss, 'cosine_loss': cosine}
  return loss, {}


def microbatches(x, k, sharding=None):
  """[B, ...] -> [k, B / k, ...], microbatch i holding examples i, i + k, i + 2k, ...: with B split over the
  devices in blocks of B / devices, a multiple of k, every microbatch keeps an equal share on every device and the
  split moves no data."""
  x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def accumulated_loss_and_grads(params, inputs, dropout_rng, k, micro_sharding, **kwargs):
  """((loss, extra), grads) of the whole batch as the mean over k equal microbatches, one at a time in a
  `lax.scan` (activations of B / k examples live at once; gradients accumulate in the params' float32).

  On a data-parallel mesh (fsdp = 1, data > 1) the scan runs on each device's rows (a `shard_map` over 'data') and the
  gradients are averaged across devices once per update, as DDP's no_sync does; XLA would otherwise all-reduce them
  after every microbatch. With fsdp > 1 the gradients are reduce-scattered per microbatch, as in PyTorch's FSDP."""
  grad_fn = jax.value_and_grad(functools.partial(batch_loss, **kwargs), has_aux=True)
  if k == 1:
    return grad_fn(params, inputs, dropout_rng)
  mesh = None if micro_sharding is None else micro_sharding.mesh
  per_device = mesh is not None and mesh.shape['fsdp'] == 1 and mesh.shape['data'] > 1

  def accumulate(params, inputs, dropout_rng):
    if per_device:  # each device's rows draw their own dropout masks
      dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index('data'))
    micro = jax.tree.map(lambda x: microbatches(x, k, None if per_device else micro_sharding), inputs)

    def add_microbatch(total, i_and_inputs):
      i, mb = i_and_inputs
      value = grad_fn(params, mb, jax.random.fold_in(dropout_rng, i))
      return jax.tree.map(jnp.add, total, value), None

    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), dropout_rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(k), micro))
    mean = jax.tree.map(lambda x: x / k, total)
    return jax.lax.pmean(mean, 'data') if per_device else mean

  if not per_device:
    return accumulate(params, inputs, dropout_rng)
  P = jax.sharding.PartitionSpec
  return jax.shard_map(accumulate, mesh=mesh, in_specs=(P(), P('data'), P()), out_specs=P(),
                       check_vma=False)(params, inputs, dropout_rng)


def train_step(state, batch, encoder_params=None, *, model, tx, alphas_cumprod, config, micro_sharding=None,
               null_tokens=None, repa_tokens=None):
  """One update: noise the batch, regress the target (a classifier: predict the label of the noised image), AdamW,
  EMA (and the power-function EMAs of training/ema.py); a non-finite loss or gradient leaves params, EMA and optimizer state unchanged and is counted.
  With REPA, repa_tokens(encoder_params, pixels) are the frozen encoder's tokens of the batch's images: its 'pixels'
  on a latent dataset, else its 'image' (training/repa.encoder_images).

  With config.train.grad_accum_steps = k > 1 the gradient is the mean over k microbatches of the batch, taken one
  after the other: the times, noise and label dropout are drawn for the whole batch as with k = 1, so the update is
  the same (within float32 rounding) but for the model's dropout masks, and the activations held are k times fewer.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  label_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  cond = condition_from_batch(batch, config)
  null = null_condition(cond, config.data.num_classes, null_tokens)
  cond = drop_condition(label_rng, cond, config.diffusion.label_dropout, null)
  inputs = loss_inputs(batch, cond, noise_rng, alphas_cumprod, config)  # no params: outside the gradient
  if repa_tokens is not None:
    inputs.update(repa_inputs(repa_tokens, encoder_params, encoder_images(batch), state.step, config.repa))
  (loss, extra), grads = accumulated_loss_and_grads(state.params, inputs, dropout_rng, config.train.grad_accum_steps,
                                                    micro_sharding, model=model, alphas_cumprod=alphas_cumprod,
                                                    config=config)
  grad_norm = optax.tree_utils.tree_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_lib.ema_decay(config.optim, state.step)
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
  gammas = [ema_lib.sigma_rel_to_gamma(s) for s in ema_lib.power_ema_sigma_rels(config)]
  power_ema = ema_lib.update_power_emas(state.power_ema, params, gammas, state.step)

  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  # A skipped update keeps the moments but not the optimizer's step counts (its integer leaves), so that the
  # learning-rate schedule follows state.step: the logged rate is the one used, and a decay ends at its step.
  opt_state = jax.tree.map(lambda n, o: n if jnp.issubdtype(n.dtype, jnp.integer) else jnp.where(finite, n, o),
                           opt_state, state.opt_state)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
      opt_state=opt_state, power_ema=keep(power_ema, state.power_ema),
      nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32), first_nonfinite_step=jnp.where(
          (state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step))
  metrics = {
      'loss': loss, 'grad_norm': grad_norm, 'learning_rate': learning_rate_schedule(config.optim)(state.step), **extra
  }
  return new_state, metrics


def train_steps(state, batches, encoder_params=None, **kwargs):
  """`train_step` once per step of batches stacked [k, B, ...] in one program; the metrics come stacked [k].

  k > 1 is a `lax.scan`. k = 1 (the default, and a short chunk) calls the step directly: on XLA:CPU a U-Net
  step inside a scan ran 25x slower (0.13 vs 3.2 steps/s for the quickstart), even for one trip."""
  if jax.tree.leaves(batches)[0].shape[0] == 1:
    state, metrics = train_step(state, jax.tree.map(lambda x: x[0], batches), encoder_params, **kwargs)
    return state, jax.tree.map(lambda x: jnp.asarray(x)[None], metrics)  # a constant learning rate is a float
  return jax.lax.scan(lambda s, b: train_step(s, b, encoder_params, **kwargs), state, batches)


def make_train_step(config, model, tx, mesh, shardings, stacked=False, null_tokens=None, repa_tokens=None):
  """The jitted `train_step`, or with `stacked` `train_steps` (any k; each new k compiles once). null_tokens: the
  empty prompt's tokens, a text model's null condition (jobs/conditions.null_tokens). With repa_tokens (REPA's
  frozen encoder, training/repa.RepaEncoder.tokens) it is called (state, batch, encoder_params), the params
  replicated."""
  check_batch_sizes(config, mesh)
  step_fn = functools.partial(train_steps if stacked else train_step, model=model, tx=tx,
                              alphas_cumprod=jnp.asarray(alphas_cumprod_for(config)), config=config,
                              micro_sharding=sharding_lib.batch_sharding(mesh, stacked=True), null_tokens=null_tokens,
                              repa_tokens=repa_tokens)
  in_shardings = (shardings, sharding_lib.batch_sharding(mesh, stacked))
  if repa_tokens is not None:
    in_shardings += (sharding_lib.replicated(mesh),)
  return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(shardings, sharding_lib.replicated(mesh)),
                 donate_argnums=0)


def check_batch_sizes(config, mesh):
  """The train (and held-out) batches split evenly over the mesh's devices, and each device's share of the train batch
  into grad_accum_steps equal microbatches."""
  k, batch, devices = config.train.grad_accum_steps, config.train.batch_size, mesh.size
  sizes = {'train.batch_size': batch}
  if config.get('val') and config.val.every_steps:
    sizes['val.batch_size'] = config.val.batch_size
  for field, size in sizes.items():
    if size % devices:
      raise ValueError(f'config.{field}={size} does not split over the {devices} devices of the mesh: make it a '
                       f'multiple of {devices}')
  if (batch // devices) % k:
    raise ValueError(f'config.train.grad_accum_steps={k} must divide the batch of each device, '
                     f'{batch // devices} (config.train.batch_size={batch} over {devices} devices): choose a '
                     f'grad_accum_steps that divides {batch // devices}, or a batch_size that is a multiple of '
                     f'{k * devices}')

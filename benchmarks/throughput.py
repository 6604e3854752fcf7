"""Training and guided-sampling throughput: img/s, MFU and peak device memory.

  python -m benchmarks.throughput --model=dit_b --batch=256              # DiT-B/2 train step
  python -m benchmarks.throughput --model=dit_xl --batch=256 --remat     # XL/2 with per-block remat
  python -m benchmarks.throughput --model=dit_xl --batch=256 --remat --remat_policy=dots  # keeping dense outputs
  python -m benchmarks.throughput --model=dit_xl --batch=256 --grad_accum=2  # two microbatches of 128 per update
  python -m benchmarks.throughput --model=dit_b --batch=256 --mode=guided # forward with guidance (2x batch)
  python -m benchmarks.throughput --model=unet --batch=128
  python -m benchmarks.throughput --model=sit_xl_repa --batch=256    # SiT-XL/2 + REPA, DINOv2-B/14 in the step
  python -m benchmarks.throughput --model=lightningdit_xl --batch=256  # SwiGLU, RMSNorm, 2-D RoPE blocks

Synthetic on-device batches (the input pipeline is measured separately), steady state only:
compilation excluded, `block_until_ready` after each window, the median of --windows windows.
MFU = achieved model FLOP/s / peak (989 TFLOP/s, H100 SXM dense bf16, unless --peak_tflops):
a train step costs 3x the forward FLOPs; DiT forwards use the paper's Gflops (Table 4, as
multiply-adds, x2; SiT and LightningDiT-XL/2 too: SwiGLU keeps the MLP's multiply-adds), other models XLA's cost
analysis of the forward (before compilation, as `tests/models/test_models.py` checks against the DiT paper: within
1%). REPA's train step adds the frozen DINOv2's forward (XLA's count) to the 3 DiT forwards; its weights are random.
"""
import statistics
import time

from absl import app, flags

from benchmarks.benchmark_config import RECIPES, benchmark_config
from diffusion.guidance import classifier_free_guidance
from training.step import make_train_step
from models import build_model
from models.conditioning import null_condition
from models.dinov2 import REPA_POSITIONS, dinov2_from_name
from models.dit import DIT_PAPER_GMACS
from training import sharding as sharding_lib
from models.shapes import dummy_inputs
from training.repa import dinov2_tokens_fn
from training.state import count_params, create_optimizer, create_state, state_shardings

flags.DEFINE_enum('model', 'dit_b', ['dit_s', 'dit_b', 'dit_l', 'dit_xl', 'unet'] + list(RECIPES), 'Model config.')
flags.DEFINE_integer('patch', 2, 'DiT patch size.')
flags.DEFINE_integer('batch', 256, 'Global batch size (images per step; guided mode runs 2x through the network).')
flags.DEFINE_enum('mode', 'train', ['train', 'guided'], 'Train step, or one guided denoiser forward.')
flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'], 'Compute dtype (params stay float32).')
flags.DEFINE_enum('attention', 'cudnn', ['cudnn', 'xla'], 'Attention implementation (cudnn falls back to xla).')
flags.DEFINE_bool('remat', False, 'Rematerialise each block in the backward pass.')
flags.DEFINE_enum(
    'remat_policy', 'full', ['full', 'dots'], 'What a remat block keeps: its input only, or also its '
    'dense layers\' outputs (config.train.remat_policy).')
flags.DEFINE_integer('grad_accum', 1, 'Microbatches per update (config.train.grad_accum_steps; a scan).')
flags.DEFINE_integer('steps_per_call', 1, 'Train steps per jitted call (config.train.steps_per_call; a scan).')
flags.DEFINE_integer('steps', 10, 'Calls per timing window.')
flags.DEFINE_integer('windows', 5, 'Timing windows; the median is reported.')
flags.DEFINE_float('peak_tflops', 989.0, 'Peak dense bf16 TFLOP/s of the device, for MFU.')
FLAGS = flags.FLAGS


def forward_flops_per_image(config, model, params):
  import jax
  if FLAGS.model in RECIPES:
    return 2e9 * DIT_PAPER_GMACS['XL'][2]
  if FLAGS.model != 'unet' and config.data.image_size == 32:
    return 2e9 * DIT_PAPER_GMACS[FLAGS.model.split('_')[1].upper()][FLAGS.patch]
  x, t, cond = dummy_inputs(config, 1)
  analysis = jax.jit(lambda p: model.apply({'params': p}, x, t, **cond)).lower(params).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops'])


def fused_attention_kernels(jitted, *args):
  """cuDNN flash-attention calls (forward and backward) in the program: 0 means XLA's attention runs. On one
  device they are named in the lowered program; on a mesh jax wraps them for the partitioner ('n/a')."""
  import jax
  if jax.device_count() > 1:
    return 'n/a on a mesh'
  return jitted.lower(*args).as_text().count('custom_call @__cudnn$fmha')


def repa_encoder(config, mesh, pixels):
  """(tokens fn, replicated random params, forward FLOPs per image) of config.repa's DINOv2, or Nones."""
  import jax
  import jax.numpy as jnp
  if not config.repa.encoder:
    return None, (), 0.0
  module = dinov2_from_name(config.repa.encoder, dtype=jnp.dtype(config.train.compute_dtype), **REPA_POSITIONS)
  size = config.repa.encoder_resolution
  params = jax.jit(module.init, out_shardings=sharding_lib.replicated(mesh))(jax.random.PRNGKey(1),
                                                                             jnp.zeros((1, size, size, 3)))['params']
  tokens = dinov2_tokens_fn(module, size)
  analysis = jax.jit(tokens).lower(params, jnp.zeros((1,) + pixels.shape[1:], jnp.float32)).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return tokens, (params,), float(analysis['flops'])


def time_windows(run, steps, windows):
  import jax
  jax.block_until_ready(run())  # compile + warm up
  jax.block_until_ready(run())
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      out = run()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def peak_memory_bytes():
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def main(_):
  import jax
  import jax.numpy as jnp
  import numpy as np

  config = benchmark_config(FLAGS.model, FLAGS.patch, FLAGS.batch, FLAGS.dtype, FLAGS.attention, FLAGS.remat,
                            FLAGS.remat_policy, FLAGS.grad_accum)
  model, tx = build_model(config), create_optimizer(config.optim)
  mesh = sharding_lib.create_mesh(config.mesh)
  _, shardings = state_shardings(config, model, tx, mesh)
  state = create_state(config, model, tx, mesh)
  size, ch, b = config.data.image_size, config.data.channels, FLAGS.batch
  rng = np.random.default_rng(0)
  host_batch = {
      'image': rng.standard_normal((b, size, size, ch), np.float32),
      'label': rng.integers(0, config.data.num_classes, b).astype(np.int32)
  }
  if config.repa.encoder:  # the images REPA's encoder reads, stored beside the latents
    side = config.data.pixels.image_size
    host_batch['pixels'] = rng.integers(0, 256, (b, side, side, 3)).astype(np.uint8)
  batch = sharding_lib.host_batch_to_global(host_batch, mesh)
  flops = forward_flops_per_image(config, model, state.params)
  repa_tokens, frozen, encoder_flops = repa_encoder(config, mesh, host_batch.get('pixels', host_batch['image']))

  if FLAGS.mode == 'train':
    k = FLAGS.steps_per_call
    step_fn = make_train_step(config, model, tx, mesh, shardings, stacked=k > 1, repa_tokens=repa_tokens)
    if k > 1:
      batch = sharding_lib.host_batch_to_global(jax.tree.map(lambda x: np.stack([np.asarray(x)] * k), batch), mesh,
                                                stacked=True)
      b *= k  # images per call
    kernels = fused_attention_kernels(step_fn, state, batch, *frozen)
    holder = {'state': state}

    def run():
      holder['state'], metrics = step_fn(holder['state'], batch, *frozen)
      return metrics['loss']

    flops_per_image = 3 * flops + encoder_flops
  else:
    x, t = batch['image'], jnp.full((b,), 500.0)
    cond = {'y': batch['label']}

    @jax.jit
    def guided(params, x, t, cond):
      apply = lambda x, t, c: model.apply({'params': params}, x, t, **c)
      return classifier_free_guidance(apply, cond, null_condition(cond, config.data.num_classes), 1.5,
                                      learned_variance=config.diffusion.learn_sigma)(x, t)

    kernels = fused_attention_kernels(guided, state.ema_params, x, t, cond)
    run = lambda: guided(state.ema_params, x, t, cond)
    flops_per_image = 2 * flops  # conditional + unconditional forward per output image

  seconds = time_windows(run, FLAGS.steps, FLAGS.windows)
  images_per_second = b / seconds
  mfu = images_per_second * flops_per_image / (FLAGS.peak_tflops * 1e12)
  peak = peak_memory_bytes()
  print(f'device={jax.devices()[0].device_kind} x{jax.device_count()} model={FLAGS.model}'
        f'{"/" + str(FLAGS.patch) if FLAGS.model != "unet" else ""} params={count_params(state.params) / 1e6:.1f}M '
        f'mode={FLAGS.mode} batch={FLAGS.batch} steps_per_call={FLAGS.steps_per_call} dtype={FLAGS.dtype} '
        f'attention={FLAGS.attention} (cuDNN kernels: {kernels}) '
        f'remat={FLAGS.remat_policy if FLAGS.remat else False} grad_accum={FLAGS.grad_accum}')
  print(f'img/s={images_per_second:.1f} step_ms={seconds * FLAGS.batch / b * 1e3:.2f} '
        f'GFLOP/img={flops_per_image / 1e9:.1f} MFU={100 * mfu:.1f}% '
        f'peak_mem={"n/a" if peak is None else f"{peak / 2**30:.2f}GiB"}')


if __name__ == '__main__':
  app.run(main)

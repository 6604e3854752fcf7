"""Latent input pipeline throughput against the train step it must feed, in images/s.

  python -m benchmarks.input_pipeline                                  # synthetic ImageNet-256 latents
  python -m benchmarks.input_pipeline --path=data/imagenet256_latents  # an encoded directory
  python -m benchmarks.input_pipeline --train_img_per_s=760            # the rate to beat 10x (XL/2 target)

Without --path it writes --count synthetic images in the encode job's layout (32x32x4 float16, with
flipped views, shards of --shard_size; jobs/encode.py's writers) to a temporary directory.
It then times, after --warmup steps: (1) `StepBatcher.batch` alone, the host work of one step
(the permutation lookup, memory-mapped gathers across shards; latents stay float16, the train step
casts them on the device); (2) the training loop's path, `prefetch_batches` with its background
thread (chunks of --steps_per_call steps) plus `host_batch_to_global` onto the device mesh, blocked
until the arrays are on the devices. Files just written sit in the page cache, as a set that fits
in host memory does after its first epoch (ImageNet-256 latents with flips are 21 GB); a cold first
epoch reads from disk.
"""
import tempfile
import time

from absl import app, flags
import numpy as np

from input_pipeline import latents
from jobs import encode
from input_pipeline.latents import LatentSource, read_meta
from input_pipeline.loader import StepBatcher, prefetch_batches
from training import sharding as sharding_lib

flags.DEFINE_string('path', None, 'An encoded latent directory (default: write a synthetic one).')
flags.DEFINE_integer('count', 40000, 'Synthetic images (each stored twice: image and flip).')
flags.DEFINE_integer('shard_size', 8192, 'Synthetic images per shard (config.encode.shard_size).')
flags.DEFINE_integer('latent_size', 32, 'Synthetic latent height and width (256 px / 8).')
flags.DEFINE_integer('batch', 256, 'Global batch (config.train.batch_size).')
flags.DEFINE_integer('steps', 200, 'Timed steps.')
flags.DEFINE_integer('warmup', 10, 'Untimed steps first.')
flags.DEFINE_integer('prefetch', 2, 'config.data.prefetch.')
flags.DEFINE_integer('steps_per_call', 1, 'config.train.steps_per_call (batches of k steps stacked per transfer).')
flags.DEFINE_float(
    'train_img_per_s', 3000.0, 'The train step rate the pipeline must outrun 10x '
    '(default: the DiT-B/2 H100 target, docs/performance.md).')
FLAGS = flags.FLAGS


def write_synthetic(directory, count, shard_size, size, channels=4):
  """A latent directory in the encode job's format, filled with float16 noise."""
  rng = np.random.default_rng(0)
  meta = dict(format=latents.FORMAT, count=count, latent_shape=[size, size, channels], dtype='float16',
              latent_scale=0.18215, flips=True, shard_size=shard_size, num_shards=-(-count // shard_size),
              captions=False, stores='synthetic noise (benchmarks/input_pipeline.py)')
  for shard in range(meta['num_shards']):
    rows = min(shard_size, count - shard * shard_size)
    parts = {
        'labels': [rng.integers(0, 1000, rows).astype(np.int32)],
        'latents': [rng.standard_normal((rows, 2, size, size, channels), np.float32).astype(np.float16)]
    }
    encode.write_shard(directory, shard, parts, captions=False)
  encode.write_meta(directory, meta)
  return meta


def main(_):
  import jax

  import ml_collections

  with tempfile.TemporaryDirectory() as tmp:
    path = FLAGS.path or tmp
    if not FLAGS.path:
      start = time.perf_counter()
      write_synthetic(tmp, FLAGS.count, FLAGS.shard_size, FLAGS.latent_size)
      print(f'wrote {FLAGS.count} synthetic latents (x2 views) in {time.perf_counter() - start:.1f}s')
    meta = read_meta(path)
    size, channels = meta['latent_shape'][0], meta['latent_shape'][2]
    source = LatentSource(path, size, channels)
    batcher = StepBatcher(source, FLAGS.batch, seed=0, process_index=jax.process_index(),
                          process_count=jax.process_count())
    b, steps, first = FLAGS.batch, FLAGS.steps, FLAGS.warmup

    for step in range(first):
      batcher.batch(step)
    start = time.perf_counter()
    for step in range(first, first + steps):
      batcher.batch(step)
    host_rate = b * steps / (time.perf_counter() - start)

    mesh = sharding_lib.create_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
    begin = first + steps  # new steps: no help from arrays touched above beyond the page cache
    k = FLAGS.steps_per_call
    stream = prefetch_batches(batcher, begin, begin + first + steps, k, FLAGS.prefetch)
    for _ in range(-(-first // k)):
      jax.block_until_ready(sharding_lib.host_batch_to_global(next(stream)[2], mesh, stacked=True))
    start, timed = time.perf_counter(), 0
    for chunk_start, chunk_end, host_batches in stream:
      jax.block_until_ready(sharding_lib.host_batch_to_global(host_batches, mesh, stacked=True))
      timed += chunk_end - chunk_start
    device_rate = b * timed / (time.perf_counter() - start)

  ratio = device_rate / FLAGS.train_img_per_s
  print(f'source={path if FLAGS.path else "synthetic"} images={len(source)} latent={size}x{size}x{channels} '
        f'batch={b} devices={jax.device_count()} ({jax.devices()[0].platform}) host_cpus={_cpus()}')
  print(f'host batches img/s={host_rate:.0f}  prefetched onto devices img/s={device_rate:.0f}  '
        f'= {ratio:.1f}x the train step at {FLAGS.train_img_per_s:.0f} img/s '
        f'({"meets" if ratio >= 10 else "misses"} the 10x target)')


def _cpus():
  import os
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


if __name__ == '__main__':
  app.run(main)

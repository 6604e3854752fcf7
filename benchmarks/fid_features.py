"""Throughput of FID Inception feature extraction (pool3 + logits), in images/s.

  python -m benchmarks.fid_features --batch_size=64 --num_images=64 --image_size=256

Random weights unless --weights is given (speed does not depend on them). uint8 inputs of
image_size x image_size are resized to 299 inside the jitted forward. Compilation is excluded:
one warm-up batch first, then the median over batches of the per-batch time, and the end-to-end
rate of `extract_features` (host -> device -> host) over --num_images.
"""
import argparse
import time

import jax
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec as P

from evaluation import device_batches, inception, inception_convert, inception_metrics


def _variables(weights):
  if weights:
    return inception_convert.load_inception_params(weights)
  return inception_convert.convert_state_dict(inception_convert.random_state_dict(seed=0))


def benchmark(batch_size, num_images, image_size, precision='highest', weights=None, repeats=5):
  """{'median_batch_img_per_s', 'end_to_end_img_per_s', 'compile_s', ...} for the given setting."""
  model = inception.FIDInceptionV3(precision=precision)
  mesh = device_batches.local_mesh()  # every local device, as the evaluators run
  variables = device_batches.replicate(_variables(weights), mesh)
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
  device_batch = jax.device_put(batch, NamedSharding(mesh, P('batch')))
  start = time.perf_counter()
  jax.block_until_ready(inception_metrics._inception_forward(model, variables, device_batch))  # pylint: disable=protected-access
  compile_s = time.perf_counter() - start
  batch_times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(inception_metrics._inception_forward(model, variables, device_batch))  # pylint: disable=protected-access
    batch_times.append(time.perf_counter() - start)
  images = rng.integers(0, 256, (num_images, image_size, image_size, 3), dtype=np.uint8)
  start = time.perf_counter()
  inception_metrics.extract_features(variables, images, batch_size, model, mesh)
  end_to_end_s = time.perf_counter() - start
  return {
      'device': f'{jax.devices()[0].device_kind} x{mesh.devices.size}', 'platform': jax.default_backend(),
      'batch_size': batch_size, 'image_size': image_size, 'precision': precision, 'compile_s': compile_s,
      'median_batch_img_per_s': batch_size / np.median(batch_times), 'end_to_end_img_per_s': num_images / end_to_end_s,
      'num_images': num_images
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch_size', type=int, default=200)
  parser.add_argument('--num_images', type=int, default=1000)
  parser.add_argument('--image_size', type=int, default=256, help='input side, resized to 299')
  parser.add_argument('--precision', default='highest', choices=['highest', 'high', 'default'],
                      help="conv/fc matmul precision ('default' allows TF32/bf16 passes on GPU)")
  parser.add_argument('--repeats', type=int, default=5, help='timed batches for the median')
  parser.add_argument('--weights', default=None, help='converted .msgpack (random if not given)')
  args = parser.parse_args(argv)
  result = benchmark(args.batch_size, args.num_images, args.image_size, args.precision, args.weights, args.repeats)
  print(f"FID Inception features on {result['device']} ({result['platform']}), batch "
        f"{result['batch_size']}, {result['image_size']}px -> 299, precision {result['precision']}: "
        f"{result['median_batch_img_per_s']:.1f} img/s (median of {args.repeats} batches), "
        f"{result['end_to_end_img_per_s']:.1f} img/s end to end over {result['num_images']} images; "
        f"compile {result['compile_s']:.1f} s")


if __name__ == '__main__':
  main()

"""DiT model size x patch size on ImageNet 256x256 latents: the paper's grid (Table 4, Fig. 2 and 6), for accelerators.

    python ablate.py --sweep=configs/ablations/dit_grid_imagenet.py --root=runs/ablations --print_commands

prints one command per run (12 runs: S/B/L/XL x patch 2/4/8, 400K steps of batch 256 each) to send
to a cluster; each command trains one run (resuming from its checkpoints) and writes its result.json;
`--collect_only` then writes the table and the FID-vs-Gflops plot. Needs the encoded latents, the
VAE, the FID Inception weights and the ImageNet reference statistics of configs/dit.py and
docs/evaluation.md (ADM's VIRTUAL_imagenet256_labeled.npz, scored as the ADM evaluator scores it: FID, sFID,
IS, precision and recall with the TF graph's preprocessing). FID-50K without guidance, 250 DDPM steps, as in
the paper (Table 4: B/2 43.47, L/2 23.33, XL/2 19.47). The CPU-sized twin on the digits is dit_grid.py.
"""
import ml_collections

from configs.dit import dit_config
from models.dit import DIT_VARIANTS


def base():
  c = dit_config('S', 2)
  c.sample.guidance_scale = 1.0  # Table 4 is without guidance
  c.sample.num_samples = 50_000
  c.evals.inception = ml_collections.ConfigDict({
      'every_steps': 0, 'num_samples': 50_000, 'seed': 12345, 'inception_weights': 'weights/inception_fid.msgpack',
      'reference_npz': 'refs/imagenet256.npz', 'batch_size': 200, 'precision_recall': True, 'k': 3, 'is_splits': 10,
      'preprocessing': 'tensorflow'
  })  # as the ADM evaluator that scored the paper's numbers
  return c


def get_sweep():
  return {
      'kind':
          'train',
      'base':
          base(),
      'axes': {
          'size': [
              {'name': name, **{f'model.{k}': v for k, v in variant.items()}} for name, variant in DIT_VARIANTS.items()
          ],
          'patch': {'model.patch_size': [8, 4, 2]},
      },
      'metrics': ['fid', 'loss'],
      'columns': [
          'params_m', 'gflops', 'fid', 'sfid', 'inception_score', 'precision', 'recall', 'loss', 'steps_per_second'
      ],
      'plots': [{
          'x': 'gflops', 'y': 'fid', 'series': 'size', 'annotate': 'patch', 'logx': True, 'logy': True,
          'xlabel': 'forward Gflops per image (multiply-adds)', 'file': 'fid_vs_gflops.png'
      }],
  }

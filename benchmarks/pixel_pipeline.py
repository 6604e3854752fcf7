"""Pixel sources' decode-and-resize throughput (image_folder and TFDS), in images/s, by decoding threads.

  python -m benchmarks.pixel_pipeline                          # 512 synthetic 500x375 JPEGs -> 256x256
  python -m benchmarks.pixel_pipeline --workers=1,8,16 --size=64

It writes --count synthetic JPEGs (ImageNet's typical 500x375, quality 90, smooth noise so that they compress as
photos do, about 80 KB) as an image folder and as a TFDS dataset in ArrayRecord format (a builder defined here,
prepared with tensorflow-datasets alone), then times `source.get` on batches of --batch random indices, the host
work of a step: read, decode, box-halve, bicubic resize, centre crop (input_pipeline/sources.py). The median of
--repeats batches is printed per source and `data.num_workers`. Without tensorflow-datasets only the image folder
is timed. The row 'tfds, decoded by TFDS' decodes as `tfds.data_source` does by default (in the calling thread,
before the threads resize), what TfdsSource did before it kept the images encoded for its threads. The last
column times the calling thread's share alone (reading the records, and decoding them in that row): it bounds the
rate however many cores share the rest.
"""
import io
import os
import statistics
import tempfile
import time

from absl import app, flags
import numpy as np

from input_pipeline.images import center_crop_resize, map_threads
from input_pipeline.sources import ImageFolderSource, TfdsSource

flags.DEFINE_integer('count', 512, 'Synthetic images written.')
flags.DEFINE_integer('batch', 256, 'Images per timed batch (config.train.batch_size on one host).')
flags.DEFINE_integer('size', 256, 'config.data.image_size.')
flags.DEFINE_integer('repeats', 5, 'Timed batches per row (the median is printed).')
flags.DEFINE_list('workers', ['1', '2', '4', '8'], 'config.data.num_workers values.')
FLAGS = flags.FLAGS


def synthetic_jpeg(rng, width=500, height=375):
  from PIL import Image
  coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
  noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3)), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(noisy).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def write_folder(root, jpegs):
  for i, data in enumerate(jpegs):
    os.makedirs(os.path.join(root, f'class{i % 10}'), exist_ok=True)
    with open(os.path.join(root, f'class{i % 10}', f'{i}.jpg'), 'wb') as f:
      f.write(data)


def write_tfds(data_dir, jpegs):
  import tensorflow_datasets as tfds

  class SyntheticJpegs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict(
              {'image': tfds.features.Image(encoding_format='jpeg'),
               'label': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i, data in enumerate(jpegs):
        yield i, {'image': data, 'label': i % 10}

  tfds.disable_progress_bar()
  SyntheticJpegs(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return 'synthetic_jpegs'


class TfdsDecodedSource:
  """For comparison: records decoded by TFDS in the calling thread, then resized on the threads."""
  def __init__(self, name, data_dir, size, num_workers):
    import tensorflow_datasets as tfds
    self.data = tfds.data_source(name, split='train', data_dir=data_dir, download=False)
    self.size, self.num_workers = size, num_workers

  def __len__(self):
    return len(self.data)

  def records(self, indices):
    return self.data.__getitems__([int(i) for i in indices])

  def get(self, indices):
    from PIL import Image

    records = self.records(indices)
    return np.stack(
        map_threads(lambda r: center_crop_resize(Image.fromarray(r['image']), self.size), records, self.num_workers))


def median_rate(fn, size, batch, repeats, rng):
  """Images/s of fn(indices) on batches of random indices; the first call warms the thread pool and page cache."""
  times = []
  for _ in range(repeats + 1):
    indices = rng.choice(size, batch)
    start = time.perf_counter()
    fn(indices)
    times.append(time.perf_counter() - start)
  return batch / statistics.median(times[1:])


def main(_):
  import importlib.util

  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    jpegs = [synthetic_jpeg(rng) for _ in range(FLAGS.count)]
    write_folder(os.path.join(tmp, 'folder'), jpegs)
    sources = {'image_folder': lambda n: ImageFolderSource(os.path.join(tmp, 'folder'), FLAGS.size, 3, n)}
    if importlib.util.find_spec('tensorflow_datasets') is not None:
      name = write_tfds(os.path.join(tmp, 'tfds'), jpegs)
      sources['tfds'] = lambda n: TfdsSource(name, 'train', FLAGS.size, 3, n, os.path.join(tmp, 'tfds'))
      sources['tfds, decoded by TFDS'] = lambda n: TfdsDecodedSource(name, os.path.join(tmp, 'tfds'), FLAGS.size, n)
    print(
        f'{FLAGS.count} synthetic 500x375 JPEGs (mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} KB) -> '
        f'{FLAGS.size}x{FLAGS.size}, batch {FLAGS.batch}, median of {FLAGS.repeats}, host cpus {len(os.sched_getaffinity(0))}'
    )
    print('| source | ' + ' | '.join(f'{w} threads img/s' for w in FLAGS.workers) + ' | calling thread alone img/s |')
    print('|---|' + '---:|' * (len(FLAGS.workers) + 1))
    for label, make in sources.items():
      rates = []
      for w in FLAGS.workers:
        source = make(int(w))
        rates.append(median_rate(source.get, len(source), FLAGS.batch, FLAGS.repeats, rng))
      # The part no thread shares, a ceiling whatever the cores: reading the records (and decoding, as TFDS does).
      serial = (f'{median_rate(source.records, len(source), FLAGS.batch, FLAGS.repeats, rng):.0f}' if hasattr(
          source, 'records') else '-')
      print(f'| {label} | ' + ' | '.join(f'{r:.0f}' for r in rates) + f' | {serial} |')


if __name__ == '__main__':
  app.run(main)

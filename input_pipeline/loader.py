"""Batches as a pure function of (seed, step): exact resume and multi-host slicing for free.

Example j of step s is position p = s * global_batch + j of an endless stream that visits the
dataset in a fresh permutation every epoch; host h of P reads positions [h B/P, (h+1) B/P) of
each step. Random flips and crops are drawn from (seed, step) for the whole global batch. Training consumes chunks of
`steps_per_call` steps, their host batches stacked; a background thread prepares the next `prefetch` chunks.
"""
import queue
import threading

import numpy as np


class StepBatcher:
  def __init__(self, source, global_batch, seed, random_flip=False, process_index=0, process_count=1,
               random_crop=False):
    if global_batch % process_count:
      raise ValueError(f'config.train.batch_size={global_batch} is not divisible by {process_count} hosts')
    self.source, self.global_batch, self.seed = source, global_batch, seed
    self.random_flip, self.random_crop, self.n = random_flip, random_crop, len(source)
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self._perm_epoch, self._perm = None, None

  def _permutation(self, epoch):
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      self._perm_epoch = epoch
    return self._perm

  def indices(self, step):
    """Dataset indices of this host's part of step `step`."""
    positions = step * self.global_batch + self.offset + np.arange(self.local_batch, dtype=np.int64)
    epochs, within = np.divmod(positions, self.n)
    out = np.empty(self.local_batch, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._permutation(int(epoch))[within[sel]]
    return out

  def batch(self, step):
    if self.random_crop:  # the source crops as it decodes: three draws per example (sources.random_crop_resize)
      draws = np.random.default_rng([self.seed, step, 2]).random((self.global_batch, 3))
      batch = self.source.get(self.indices(step), crop_draws=draws[self.offset:self.offset + self.local_batch])
    else:
      batch = self.source.get(self.indices(step))
    if self.random_flip:
      flips = np.random.default_rng([self.seed, step, 1]).random(self.global_batch) < 0.5
      flip = flips[self.offset:self.offset + self.local_batch]
      batch['image'] = np.where(flip[:, None, None, None], batch['image'][:, :, ::-1], batch['image'])
    return batch

  def batches(self, start, end):
    """This host's batches of steps [start, end), stacked on a leading step axis: [end - start, local B, ...]."""
    if end - start == 1:  # the default steps_per_call: a view, no copy
      return {key: value[None] for key, value in self.batch(start).items()}
    batches = [self.batch(step) for step in range(start, end)]
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def step_chunks(start_step, num_steps, steps_per_call):
  """(start, end) step ranges covering [start_step, num_steps), each ending on a multiple of steps_per_call (or at
  num_steps); only the first is shorter, when start_step is not such a multiple (resuming a run with another one)."""
  start = start_step
  while start < num_steps:
    end = min(num_steps, (start // steps_per_call + 1) * steps_per_call)
    yield start, end
    start = end


def prefetch_batches(batcher, start_step, num_steps, steps_per_call=1, prefetch=2):
  """Yields (start, end, stacked host batches) for the `step_chunks` of [start_step, num_steps), prepared
  `prefetch` chunks ahead in a thread named 'input-prefetch'. The thread ends soon after its consumer leaves (the
  generator closed, or collected after an exception), within one chunk's preparation; it never waits on a full
  queue for a consumer that is gone."""
  chunks = step_chunks(start_step, num_steps, steps_per_call)
  if prefetch <= 0:
    for start, end in chunks:
      yield start, end, batcher.batches(start, end)
    return
  q = queue.Queue(maxsize=prefetch)
  stop = threading.Event()

  def put(item):
    """Puts `item` unless the consumer left first; False then."""
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for start, end in chunks:
        if not put((start, end, batcher.batches(start, end))):
          return
    except Exception as e:  # surfaced in the consumer's thread
      put(e)
      return
    put(None)

  thread = threading.Thread(target=work, daemon=True, name='input-prefetch')
  thread.start()
  try:
    while (item := q.get()) is not None:
      if isinstance(item, Exception):
        raise item
      yield item
  finally:
    stop.set()

"""input_pipeline.loader.prefetch_batches: its thread ends when the consumer leaves (sweeps run many trainings in
one process, so a thread left waiting on a full queue would pile up)."""
import threading
import time

import numpy as np
import pytest

from input_pipeline.loader import prefetch_batches


class CountingBatcher:
  """batches(start, end) as StepBatcher's; raises at step `fail_at`."""
  def __init__(self, fail_at=None):
    self.fail_at = fail_at

  def batches(self, start, end):
    if self.fail_at is not None and start <= self.fail_at < end:
      raise RuntimeError(f'no batch for step {self.fail_at}')
    return {'image': np.full((end - start, 2), start, np.float32)}


def prefetch_threads():
  return [t for t in threading.enumerate() if t.name == 'input-prefetch' and t.is_alive()]


def wait_for_no_prefetch_thread(seconds=2.0):
  deadline = time.monotonic() + seconds
  while prefetch_threads() and time.monotonic() < deadline:
    time.sleep(0.02)
  return prefetch_threads()


@pytest.fixture(autouse=True)
def no_thread_before():
  assert not wait_for_no_prefetch_thread(), 'a prefetch thread of an earlier test is still alive'


@pytest.mark.parametrize(
    'num_steps, fail_at',
    [
        (10**6, None),  # the thread waits to put chunk 2
        (2, None),  # every chunk is queued: the thread waits to put the end marker
        (3, 2),  # chunk 2 failed: the thread waits to put the error
    ])
def test_closing_the_generator_ends_the_thread(num_steps, fail_at):
  stream = prefetch_batches(CountingBatcher(fail_at), 0, num_steps, prefetch=1)
  start, end, batch = next(stream)
  assert (start, end) == (0, 1) and batch['image'].shape == (1, 2)
  time.sleep(0.3)  # the thread has filled the queue and waits on it
  assert prefetch_threads()
  stream.close()
  assert not wait_for_no_prefetch_thread()


def test_an_exception_in_the_consumer_ends_the_thread():
  def consume():
    for _ in prefetch_batches(CountingBatcher(), 0, 10**6, prefetch=1):
      time.sleep(0.3)
      raise KeyError('the training step failed')

  with pytest.raises(KeyError):
    consume()
  assert not wait_for_no_prefetch_thread()


def test_all_chunks_and_errors_still_arrive():
  assert [(s, e) for s, e, _ in prefetch_batches(CountingBatcher(), 3, 10, steps_per_call=4, prefetch=1)] == [(3, 4),
                                                                                                              (4, 8),
                                                                                                              (8, 10)]
  with pytest.raises(RuntimeError, match='no batch for step 5'):
    list(prefetch_batches(CountingBatcher(fail_at=5), 0, 10, prefetch=2))
  assert not wait_for_no_prefetch_thread()

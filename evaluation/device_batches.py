"""A jitted function over an array in fixed-size batches, each batch split over this host's devices.

The evaluators' networks (FID Inception, CLIP) and the precision/recall distances run this way, so an
evaluation uses every local accelerator. Batches are padded to one size, so each function compiles once
per input shape; the weights are placed on every device once (`replicate`), not sent with each batch.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def local_mesh():
  """A one-axis mesh of this process's devices (on one host: all of them)."""
  return Mesh(np.asarray(jax.local_devices()), ('batch',))


def replicate(tree, mesh):
  """Every array of tree on every device of mesh; a no-op for arrays already placed so."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def padded_batches(array, batch_size):
  """Yields (batch of exactly batch_size rows, number of real rows); the last one is zero-padded."""
  for start in range(0, len(array), batch_size):
    batch = np.asarray(array[start:start + batch_size])
    valid = len(batch)
    if valid < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - valid, *batch.shape[1:]), batch.dtype)])
    yield batch, valid


def map_batches(fn, array, batch_size, mesh):
  """fn(batch) for consecutive batches of array's rows, as numpy outputs of len(array) rows (fn may return a
  pytree of arrays with a leading batch axis).

  batch_size is rounded up to a multiple of mesh's device count, and each batch is split over the mesh.
  Batches are dispatched without waiting (jax runs them asynchronously); results come back at the end.
  """
  if len(array) == 0:
    raise ValueError('no rows to process')
  n = mesh.devices.size
  batch_size = -(-batch_size // n) * n
  sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
  outputs, counts = [], []
  for batch, valid in padded_batches(array, batch_size):
    outputs.append(fn(jax.device_put(batch, sharding)))
    counts.append(valid)
  outputs = jax.device_get(outputs)
  trimmed = [jax.tree.map(lambda x, valid=valid: np.asarray(x)[:valid], out) for out, valid in zip(outputs, counts)]
  return jax.tree.map(lambda *parts: np.concatenate(parts), *trimmed)

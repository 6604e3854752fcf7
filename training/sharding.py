"""The device mesh and where every array lives on it.

Two axes: 'data' (batch split, parameters replicated) and 'fsdp' (batch split too, and the
parameters and optimizer state sharded, ZeRO-3 style). A parameter is sharded over 'fsdp' along
its largest dimension divisible by the axis size, if it has at least `min_shard_size` elements;
everything else is replicated. XLA inserts the all-gathers and reduce-scatters.
"""
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ('data', 'fsdp')


def mesh_shape(mesh_config, num_devices):
  """Resolves -1 entries of (data, fsdp) so that their product is num_devices."""
  sizes = [mesh_config.data, mesh_config.fsdp]
  if sizes.count(-1) > 1:
    raise ValueError('only one of config.mesh.data and config.mesh.fsdp may be -1')
  chosen = getattr(mesh_config, 'num_devices', -1)
  devices = f'{num_devices} devices' + (f' (config.mesh.num_devices={chosen} of {jax.device_count()})'
                                        if chosen != -1 else '')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f'the mesh\'s {devices} cannot be split into config.mesh sizes data={sizes[0]} x '
                       f'fsdp={sizes[1]}')
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f'config.mesh data={sizes[0]} x fsdp={sizes[1]} needs {int(np.prod(sizes))} devices, but the mesh '
                     f'has {devices}; use -1 for one axis to take the rest')
  return tuple(sizes)


def mesh_devices(mesh_config):
  """The devices a mesh of `mesh_config` spans: all of them, or with num_devices = N the first N of this process's."""
  count = getattr(mesh_config, 'num_devices', -1)
  if count == -1:
    return jax.devices()
  if jax.process_count() > 1:
    raise ValueError(f'config.mesh.num_devices={count} picks devices of one process, but this job runs '
                     f'{jax.process_count()} processes: use -1 (every device)')
  if count > jax.device_count():
    raise ValueError(f'config.mesh.num_devices={count}, but {jax.device_count()} devices are present: use at most '
                     f'{jax.device_count()}, or -1 for all')
  return jax.devices()[:count]


def create_mesh(mesh_config, devices=None):
  devices = mesh_devices(mesh_config) if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (AssertionError, ValueError):  # a device count or topology mesh_utils cannot lay out
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, DATA_AXES)


def batch_sharding(mesh, stacked=False):
  """Batch dimension split over both axes: the leading one, or with `stacked` the second, after an unsplit step
  axis ([k, B, ...] batches of k steps)."""
  return NamedSharding(mesh, P(None, DATA_AXES) if stacked else P(DATA_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def param_partition_spec(shape, fsdp_size, min_shard_size=2**14):
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_shard_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def tree_shardings(mesh, abstract_tree, min_shard_size=2**14):
  """NamedShardings for a pytree of arrays/ShapeDtypeStructs, by `param_partition_spec`."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, param_partition_spec(x.shape, fsdp, min_shard_size)), abstract_tree)


def host_batch_to_global(batch, mesh, stacked=False):
  """This host's numpy slice of the global batch -> global jax.Arrays split over the data axes. With `stacked`,
  arrays are [k, local B, ...]: this host's slice of each of k steps' batches, the step axis whole on every host."""
  sharding = batch_sharding(mesh, stacked)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def shared_batch_to_global(batch, mesh):
  """A batch every host holds whole (the same numpy values on each, e.g. sampling noise and labels) -> global
  jax.Arrays split over the data axes, each host placing only its devices' rows."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]),
                      jax.tree.map(np.asarray, batch))

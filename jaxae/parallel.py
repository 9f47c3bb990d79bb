"""Data parallelism with jax.sharding: one mesh axis, "data", over every device of every process.

Parameters and optimizer state are replicated; each global batch is split along the data axis, so
every device computes its slice of the batch and XLA all-reduces the loss and the gradients. One
device is the mesh of size one: the same code runs, with the same results.

Each process keeps the whole (small) dataset on each of its devices; the batch indices are placed
column-sharded, so each process feeds only the indices of its own slice of every global batch, and
each device gathers just those images from its local copy. No images cross devices during training.

Multi-process runs call `initialize` (jax.distributed) before touching any device.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize(coordinator_address: str, num_processes: int, process_id: int,
               timeout_s: int = 300) -> None:
  """Joins a multi-process run through JAX's distributed runtime (CPU collectives: gloo).

  Every process calls this with the same coordinator address ("host:port" of process 0) and
  process count and its own id, before any other JAX call; it waits up to `timeout_s` seconds
  for the others.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=timeout_s)


def is_primary() -> bool:
  """True in the one process (0) that writes files and prints progress."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process gets here (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def mesh_size(mesh: Mesh) -> int:
  return int(mesh.devices.size)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, batch_dim: int = 0) -> NamedSharding:
  """Split along the data axis in dimension `batch_dim`, whole in the others."""
  return NamedSharding(mesh, P(*([None] * batch_dim), DATA_AXIS))


def padded_batch_size(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that holds `batch_size` examples.

  A batch the device count does not divide is padded with masked (zero-weight) examples up to
  this size, so the loss and gradient are those of the `batch_size` real examples.
  """
  d = mesh_size(mesh)
  return math.ceil(batch_size / d) * d


def put(tree: Any, sharding: NamedSharding) -> Any:
  """Places every leaf of `tree` with `sharding`, also when it spans other processes' devices.

  Leaves already placed that way are returned as they are. Every process must pass the same
  values (as they do: same seed, same data); each one places only what its own devices hold.
  """
  def put_leaf(x):
    if isinstance(x, jax.core.Tracer):  # Traced (a lifted program): its jit places it.
      return x
    # Equal, not merely equivalent: the jitted steps' cache keys include the input shardings.
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if sharding.is_fully_addressable:
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put_leaf, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` replicated on every device of `mesh` (params, optimizer state, datasets)."""
  return put(tree, replicated(mesh))

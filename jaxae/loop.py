"""One seed's epochs and evaluation over a device-resident dataset, each one jitted program.

    state, step_losses_S = train_epoch(state, examples, epoch, seed=0, batch_size=32)
    outputs = evaluate(state, examples, batch_size=100)    # {"per_example_loss": [N], ...}

A split is the task's examples (jaxae/tasks): an image array [N, ...] or a dict of arrays with a
leading example axis. Batches have fixed shapes: the last one is padded and masked, so nothing
recompiles and every example counts once per epoch. Every function is traceable and returns
device arrays, so `jaxae.seeds.over_replicas` lifts any of them to many seeds. Data-parallel over
`mesh` (default: every device): each batch is split along the "data" axis (jaxae/parallel.py).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxae import parallel
from jaxae.steps import (TrainState, apply_mean_gradient, batch_size_of, eval_step,
                         loss_and_grad_sums, minibatch_step, scan_sums)


def epoch_key(seed, epoch) -> jax.Array:
  """The shuffling key of an epoch: a function of the seed and epoch number alone."""
  return jax.random.fold_in(jax.random.key(seed), epoch)


def steps_per_epoch(num_examples: int, batch_size: int, full_batch: bool = False) -> int:
  """Optimizer steps in an epoch: one per (padded) batch, or one for the full-batch procedure."""
  return 1 if full_batch else math.ceil(num_examples / batch_size)


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size", "width"))
def epoch_batches(key: jax.Array, num_examples: int, batch_size: int, width: int | None = None):
  """A shuffled epoch as (indices [S, W] int32, mask [S, W] float32), S = ceil(N / B).

  Row s holds batch s: up to `batch_size` real examples (mask 1), then masked padding up to
  `width` (default `batch_size`) columns.
  """
  width = batch_size if width is None else width
  steps = math.ceil(num_examples / batch_size)
  pad = steps * batch_size - num_examples
  order = jax.random.permutation(key, num_examples).astype(jnp.int32)
  indices = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)]).reshape(steps, batch_size)
  mask = jnp.concatenate([jnp.ones((num_examples,), jnp.float32),
                          jnp.zeros((pad,), jnp.float32)]).reshape(steps, batch_size)
  extra = ((0, 0), (0, width - batch_size))
  return jnp.pad(indices, extra), jnp.pad(mask, extra)


def epoch_loss(step_losses_S, num_examples: int, batch_size: int) -> np.ndarray:
  """The epoch's mean loss over its examples (float64, on the host) from its step losses; a
  leading replica axis gives one per replica."""
  counts = np.full(np.shape(step_losses_S)[-1], batch_size, np.float64)
  counts[-1] = num_examples - batch_size * (len(counts) - 1)
  return np.sum(np.asarray(step_losses_S, np.float64) * counts, axis=-1) / num_examples


def microbatch_size(batch_width: int, mesh: Mesh, per_device: int | None) -> int | None:
  """The microbatch for a (device-padded) batch of `batch_width`: None (one pass) unless it holds
  more than `per_device` examples per device."""
  if per_device is None:
    return None
  size = per_device * parallel.mesh_size(mesh)
  return size if batch_width > size else None


def train_epoch(state: TrainState, examples, epoch, *, seed, batch_size: int,
                mesh: Mesh | None = None, microbatch_per_device: int | None = None,
                scan: Callable = jax.lax.scan) -> tuple[TrainState, jax.Array]:
  """One shuffled pass of minibatch steps: (state, step losses [S]). `state` is donated.

  The shuffle is `epoch_key(seed, epoch)`'s. Batches of more than `microbatch_per_device`
  examples per device sum their gradient over microbatches of that size (the same step in less
  cache; jaxae/platforms.py chooses). `scan` runs the steps (jaxae/step_reports.py's reports
  them as they go).
  """
  mesh = mesh or parallel.data_mesh()
  width = parallel.padded_batch_size(batch_size, mesh)
  program = _epoch_program(mesh, batch_size_of(examples), batch_size, width,
                           microbatch_size(width, mesh, microbatch_per_device), scan)
  # uint32: every seed Config takes (< 2**32) keys as `jax.random.key(seed)` does.
  seed, epoch = jnp.asarray(seed, jnp.uint32), jnp.asarray(epoch, jnp.int32)
  return program(*parallel.replicate((state, examples, seed, epoch), mesh))


@functools.cache
def _epoch_program(mesh: Mesh, num_examples: int, batch_size: int, width: int,
                   microbatch: int | None, scan: Callable):
  def epoch_fn(state, examples, seed, epoch):
    indices_SW, mask_SW = epoch_batches(epoch_key(seed, epoch), num_examples, batch_size, width)
    # Split by column: each device gathers its own slice of every batch from its local copy.
    by_column = parallel.batch_sharded(mesh, batch_dim=1)
    xs = jax.lax.with_sharding_constraint((indices_SW, mask_SW), by_column)

    def step(state, xs):
      indices_W, mask_W = xs
      batch = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
          x[indices_W], parallel.batch_sharded(mesh)), examples)
      state, metrics = minibatch_step(state, batch, mask_W, microbatch_size=microbatch)
      return state, metrics["loss"]

    return scan(step, state, xs)

  replicated = parallel.replicated(mesh)
  return jax.jit(epoch_fn, donate_argnums=0, in_shardings=replicated,
                 out_shardings=replicated)


def full_batch_step(state: TrainState, examples, *, chunk_size: int = 32,
                    mesh: Mesh | None = None) -> tuple[TrainState, jax.Array]:
  """One optimizer step on the mean loss over the whole set (the original's procedure):
  (state, loss). The gradient is summed over `chunk_size` examples at a time (the last chunk
  masked), so memory stays small. `state` is donated."""
  mesh = mesh or parallel.data_mesh()
  program = _full_batch_program(mesh, parallel.padded_batch_size(chunk_size, mesh))
  state, metrics = program(*parallel.replicate((state, examples), mesh))
  return state, metrics["loss"]


@functools.cache
def _full_batch_program(mesh: Mesh, chunk_size: int):
  def step_fn(state, examples):
    def chunk_sums(start):
      chunk, mask = _rows(mesh, examples, start, chunk_size)
      return loss_and_grad_sums(state.task, state.apply_fn, state.params, chunk, mask)

    n = batch_size_of(examples)
    loss_sum, grad_sums = scan_sums(chunk_sums, jnp.arange(0, n, chunk_size, dtype=jnp.int32))
    return apply_mean_gradient(state, loss_sum, grad_sums, n)

  replicated = parallel.replicated(mesh)
  return jax.jit(step_fn, donate_argnums=0, in_shardings=replicated, out_shardings=replicated)


def _rows(mesh: Mesh, examples, start: jax.Array, size: int):
  """(examples [size, ...], mask [size]) of rows start..start+size-1, split over the mesh.

  Rows past the end repeat the last example and get mask 0, so the shape stays fixed.
  """
  n = batch_size_of(examples)
  idx = jax.lax.with_sharding_constraint(start + jnp.arange(size), parallel.batch_sharded(mesh))
  rows = jax.tree.map(lambda x: x[jnp.minimum(idx, n - 1)], examples)
  return rows, (idx < n).astype(jnp.float32)


def evaluate(state: TrainState, examples, *, batch_size: int, with_predictions: bool = True,
             mesh: Mesh | None = None) -> dict[str, jax.Array]:
  """Per-example losses [N] and, optionally, the task's predictions (e.g. "reconstructions"
  [N, 32, 32, 3]), `batch_size` examples at a time in one program; the same in every process."""
  mesh = mesh or parallel.data_mesh()
  program = _evaluation_program(mesh, batch_size_of(examples),
                                parallel.padded_batch_size(batch_size, mesh), with_predictions)
  return program(*parallel.replicate((state, examples), mesh))


@functools.cache
def _evaluation_program(mesh: Mesh, num_examples: int, batch_size: int, with_predictions: bool):
  def eval_fn(state, examples):
    def batch_outputs(start):
      batch, _ = _rows(mesh, examples, start, batch_size)  # The padding is dropped below.
      out = eval_step(state, batch)
      del out["loss"]
      return out if with_predictions else {"per_example_loss": out["per_example_loss"]}

    starts = jnp.arange(0, num_examples, batch_size, dtype=jnp.int32)
    outputs = jax.lax.map(batch_outputs, starts)  # [batches, batch_size, ...]
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:num_examples], outputs)

  replicated = parallel.replicated(mesh)
  return jax.jit(eval_fn, in_shardings=replicated, out_shardings=replicated)


def mean_loss(per_example_loss) -> np.ndarray:
  """The mean of per-example losses (float64, on the host; a leading replica axis gives one per
  replica)."""
  return np.asarray(per_example_loss, np.float64).mean(axis=-1)

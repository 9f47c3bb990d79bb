"""Epochs over a device-resident dataset with fixed shapes: nothing recompiles after epoch one.

The whole split lives on every device; each step gathers its batch by index inside the jitted
function. A split is the task's examples (jaxae/tasks.py): an image array [N, ...] or a dict of
arrays with a leading example axis; every function below takes either. The last partial batch is
padded with index 0 and masked out, so every example counts exactly once per epoch and every step
has the same shape.

Every function also takes `replicas`: 0 for a TrainState of one seed (a library user's), or R >= 1
for a stacked state of R replicas (jaxae/seeds.py; a run's, one seed being R = 1), whose replica k
uses seed + k, each with its own shuffle, on shared examples. A stacked state gives stacked results
(losses [R], step losses [R, S], predictions [R, N, ...]). One replica is taken out and runs the
single-seed program: the same program, so the same numbers to the last bit. Several run as
`replica_strategy` says: "vmap" (one program, vmapped over the replica axis) or "loop" (the
single-seed program once per replica, as one replica runs); the default is the platform's
(`platforms.replica_strategy`).

Every function takes a `mesh` (default: `parallel.data_mesh()`, all devices): the batch is split
along its data axis and the state replicated (see jaxae/parallel.py). A batch size that the device
count does not divide is padded with masked examples to the next multiple, which leaves the loss
and the gradient unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxae import parallel, platforms, seeds
from jaxae.steps import (TrainState, apply_mean_gradient, batch_size_of, eval_step,
                         loss_and_grad_sums, minibatch_step, scan_sums)


# How many jitted calls the evaluation loop may queue ahead of the device. Unbounded queues of
# programs with collectives deadlock XLA:CPU's multi-device runtime (2 devices, ~100+ queued
# steps: "Expected 2 threads to join the rendezvous"); a few steps keep any device busy.
MAX_STEPS_IN_FLIGHT = 8


class _InFlight:
  """Waits for the output of the step `MAX_STEPS_IN_FLIGHT` back before queueing another."""

  def __init__(self):
    self._pending = collections.deque()
    self._limit = MAX_STEPS_IN_FLIGHT

  def add(self, output) -> None:
    self._pending.append(output)
    if len(self._pending) > self._limit:
      jax.block_until_ready(self._pending.popleft())


# The defaults of the functions below: the seed model's on CPU (jaxae/platforms.py, where runs
# take theirs from). On 2 CPU cores 10,000 images evaluated in 1.2-1.4 s at batches of 32-100
# and in 2.0-4.3 s at 500 (large convolution operands fall out of cache).
EVAL_BATCH_SIZE = platforms.CPU_BATCH_SIZES["seed"][1]


def _one_by_one(replicas: int, mesh: Mesh, strategy: str | None) -> bool:
  """Whether the replicas run as single seeds, one after another: one replica always does.

  Why one replica does not run a program of its own with the axis taken off inside it: XLA then
  fuses the full-batch step's Adam update with the output's reshape and computes it an ulp apart,
  and every test and run that also trains a plain state would compile each program twice.
  """
  return replicas == 1 or (replicas > 1 and platforms.replica_strategy(mesh, strategy) == "loop")


def _stacked_results(results: list["EpochResult"]) -> "EpochResult":
  return EpochResult(seeds.stack([r.state for r in results]),
                     np.array([r.loss for r in results]),
                     np.stack([r.step_losses for r in results]))


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The shuffling key of an epoch: a function of the seed and epoch number alone."""
  return jax.random.fold_in(jax.random.key(seed), epoch)


def steps_per_epoch(num_examples: int, batch_size: int, full_batch: bool = False) -> int:
  """Optimizer steps in an epoch: one per (padded) batch, or one for the full-batch procedure."""
  return 1 if full_batch else math.ceil(num_examples / batch_size)


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size", "width"))
def epoch_batches(key: jax.Array, num_examples: int, batch_size: int, width: int | None = None):
  """A shuffled epoch as (indices [S, W] int32, mask [S, W] float32), S = ceil(N / B).

  Row s holds batch s: up to `batch_size` real examples (mask 1) and then masked padding up to
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


# Training steps over more than this many examples per device sum their gradient over
# microbatches of this size (see train.loss_and_grad_sums): on 2 CPU cores, batch-256 epochs ran
# at 5,600 images/s whole and 6,900 in microbatches of 64 (the activations stay in cache).
MICROBATCH_PER_DEVICE = platforms.CPU_BATCH_SIZES["seed"][0]


# The host side of in-epoch progress: an epoch program built with `report_every` calls
# `_report_steps` every that many steps (jax.debug.callback); whoever is listening hears it.
_listeners: list[Callable[[int], None]] = []
_listeners_lock = threading.Lock()


def _report_steps(done, _after=None) -> None:
  # Several replicas (vmap) or devices may report one step at once: the largest count is news.
  done = int(np.max(done))
  with _listeners_lock:
    listeners = list(_listeners)
  for listener in listeners:
    listener(done)


@contextlib.contextmanager
def _listening(listener: Callable[[int], None]):
  with _listeners_lock:
    _listeners.append(listener)
  try:
    yield
  finally:
    with _listeners_lock:
      _listeners.remove(listener)


def report_every(steps: int) -> int:
  """How often an epoch of `steps` steps reports them: about 100 times per epoch."""
  return max(1, steps // 100)


def sharded_train_epoch(mesh: Mesh, microbatch_size: int | None = None, replicas: bool = False,
                        report_every: int = 0):
  """An epoch of minibatch steps as one `lax.scan`, jitted for `mesh`; the state is donated.

  (state, examples, indices_SW, mask_SW) -> (state, step_losses [S]). Step s trains on
  examples[indices_SW[s]] with weights mask_SW[s]. The examples and state are replicated; indices
  and mask are split by column, so each device gathers its own slice of every batch. One program
  per epoch: on CPU it ran 25-30% faster than one dispatch per step from Python.
  With `replicas`, state, indices and mask have a leading replica axis [R, ...] (vmapped; the step
  losses are [R, S]); the examples are shared.
  With `report_every=k > 0`, every k-th step tells the host how many steps are done (for
  progress; the numbers computed are the same).
  """
  # One cache key per program.
  return _sharded_train_epoch(mesh, microbatch_size, bool(replicas), int(report_every))


@functools.cache
def _sharded_train_epoch(mesh: Mesh, microbatch_size: int | None, replicas: bool,
                         report_every: int = 0):
  replicated = parallel.replicated(mesh)
  by_column = parallel.batch_sharded(mesh, batch_dim=2 if replicas else 1)

  def epoch_fn(state, examples, indices_SW, mask_SW):
    def gather(indices_W):
      return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
          x[indices_W], parallel.batch_sharded(mesh)), examples)

    def step(state, xs):
      indices_W, mask_W = xs
      # Every batch of an epoch holds real examples: the step without train_step's guard for a
      # batch of padding alone (steps.minibatch_step says why).
      state, metrics = minibatch_step(state, gather(indices_W), mask_W,
                                      microbatch_size=microbatch_size)
      return state, metrics["loss"]

    xs = (indices_SW, mask_SW)
    if not report_every:
      return jax.lax.scan(step, state, xs)
    return _scan_reporting(step, state, xs, report_every)

  in_axes, in_shardings = (0, None, 0, 0), (replicated, replicated, by_column, by_column)
  if replicas:
    epoch_fn = jax.vmap(epoch_fn, in_axes=in_axes)
  return jax.jit(epoch_fn, donate_argnums=0, in_shardings=in_shardings,
                 out_shardings=(replicated, replicated))


def _scan_reporting(step, state, xs, every: int):
  """`lax.scan(step, state, xs)` that reports the steps done to the host after every `every`.

  As a scan of scans of `every` steps (and one of the remaining steps), so the steps are the
  same computation and no step waits on a branch. Each report follows its chunk's losses, so it
  cannot run ahead of the work.
  """
  total = jax.tree.leaves(xs)[0].shape[0]
  chunks = total // every

  def chunk(state, chunk_xs):
    done, xs_chunk = chunk_xs  # The steps done once this chunk's are.
    state, losses = jax.lax.scan(step, state, xs_chunk)
    jax.debug.callback(_report_steps, done, losses)
    return state, losses

  head = jax.tree.map(lambda x: x[:chunks * every].reshape(chunks, every, *x.shape[1:]), xs)
  ends = jnp.arange(1, chunks + 1, dtype=jnp.int32) * every
  state, head_losses = jax.lax.scan(chunk, state, (ends, head))
  losses = [head_losses.reshape(-1)]
  if total > chunks * every:
    state, tail_losses = jax.lax.scan(step, state, jax.tree.map(lambda x: x[chunks * every:], xs))
    losses.append(tail_losses)
  return state, jnp.concatenate(losses)


def microbatch_size(batch_width: int, mesh: Mesh,
                    per_device: int | None = MICROBATCH_PER_DEVICE) -> int | None:
  """The microbatch `train_epoch` uses for a (device-padded) batch of `batch_width`, or None.

  `per_device=None`: none (each step in one pass, as on accelerators; jaxae/platforms.py).
  """
  if per_device is None:
    return None
  size = per_device * parallel.mesh_size(mesh)
  return size if batch_width > size else None


@dataclasses.dataclass(frozen=True)
class EpochResult:
  state: TrainState
  # Mean training loss over the epoch's examples: a float, or [R] for a stacked state.
  loss: float | np.ndarray
  # [S] (or [R, S]), one per optimizer step: NaN-checking names the bad step (and replica).
  step_losses: np.ndarray


def to_host(x: jax.Array) -> np.ndarray:
  """`x` as float64 NumPy, waited for in short sleeps rather than inside XLA.

  Why: Python runs signal handlers only between bytecodes, so a Ctrl-C that arrives while the
  host blocks on a whole epoch's program would wait for its end (minutes for the U-Net's seeds).
  """
  while not x.is_ready():
    time.sleep(0.02)
  return np.asarray(x, np.float64)


def train_epoch(state: TrainState, examples, *, seed: int, epoch: int, batch_size: int,
                mesh: Mesh | None = None,
                microbatch_per_device: int | None = MICROBATCH_PER_DEVICE,
                replicas: int = 0, replica_strategy: str | None = None,
                progress: Callable[..., None] | None = None) -> EpochResult:
  """One shuffled pass of minibatch steps. `state` is donated: use the returned one.

  `progress(done, total, replica=None)` hears the steps done while the epoch runs (from another
  thread; with replicas run one after another, the total counts every replica's steps and
  `replica` says which one runs).

  Batches of more than `microbatch_per_device` examples per device sum their gradient over
  microbatches of that size (the same steps; see `train.loss_and_grad_sums`). With `replicas=R`
  the state is R stacked replicas (jaxae/seeds.py); replica k shuffles with seed + k.
  """
  mesh = mesh or parallel.data_mesh()
  if _one_by_one(replicas, mesh, replica_strategy):
    steps = steps_per_epoch(batch_size_of(examples), batch_size)

    def replica_progress(k):
      return progress and (lambda done, _, replica=None: progress(
          k * steps + done, replicas * steps, replica=k))
    return _stacked_results([
        train_epoch(seeds.replica(state, k), examples, seed=seed + k, epoch=epoch,
                    batch_size=batch_size, mesh=mesh, microbatch_per_device=microbatch_per_device,
                    progress=replica_progress(k))
        for k in range(replicas)])
  n = batch_size_of(examples)
  epoch_fn, (state, examples, indices, mask) = _epoch_program(
      state, examples, seed=seed, epoch=epoch, batch_size=batch_size, mesh=mesh,
      microbatch_per_device=microbatch_per_device, replicas=replicas, progress=bool(progress))
  counts = np.asarray(mask.sum(axis=-1), np.float64)
  steps = mask.shape[-2]
  with _listening(lambda done: progress(done, steps)) if progress else contextlib.nullcontext():
    state, step_losses = epoch_fn(state, examples, indices, mask)
    step_losses = to_host(step_losses)
    if progress:
      jax.effects_barrier()  # Every report heard before the listener goes.
  losses = np.sum(step_losses * counts, axis=-1) / n
  return EpochResult(state, losses if replicas else float(losses), step_losses)


def _epoch_program(state: TrainState, examples, *, seed: int, epoch: int, batch_size: int,
                   mesh: Mesh, microbatch_per_device: int | None, replicas: int, progress: bool):
  """(the jitted epoch program, its arguments (state, examples, indices, mask)) for an epoch of
  one seed or of `replicas` stacked ones in one program (train_epoch)."""
  n = batch_size_of(examples)
  state, examples = parallel.replicate((state, examples), mesh)
  width = parallel.padded_batch_size(batch_size, mesh)
  replica_seeds = range(seed, seed + replicas) if replicas else [seed]
  batches = [epoch_batches(epoch_key(s, epoch), n, batch_size, width) for s in replica_seeds]
  indices, mask = tuple(jnp.stack(p) for p in zip(*batches)) if replicas else batches[0]
  # Each process places only the columns (batch slices) of its own devices.
  indices, mask = parallel.put((indices, mask),
                               parallel.batch_sharded(mesh, batch_dim=mask.ndim - 1))
  epoch_fn = sharded_train_epoch(mesh, microbatch_size(width, mesh, microbatch_per_device),
                                 bool(replicas), report_every(mask.shape[-2]) if progress else 0)
  return epoch_fn, (state, examples, indices, mask)


def compile_train_epoch(state: TrainState, examples, *, batch_size: int,
                        mesh: Mesh | None = None,
                        microbatch_per_device: int | None = MICROBATCH_PER_DEVICE,
                        replicas: int = 0, replica_strategy: str | None = None,
                        progress: bool = False) -> None:
  """Compiles, without running it, the program `train_epoch` runs for these arguments (one seed,
  or `replicas` stacked ones), so that its compile time can be measured alone
  (experiments/benchmark.py, experiments/time_to_quality.py). Nothing is donated."""
  mesh = mesh or parallel.data_mesh()
  if _one_by_one(replicas, mesh, replica_strategy):  # The single-seed program, as train_epoch.
    state, replicas = seeds.replica(state, 0), 0
  epoch_fn, args = _epoch_program(
      state, examples, seed=0, epoch=0, batch_size=batch_size, mesh=mesh,
      microbatch_per_device=microbatch_per_device, replicas=replicas, progress=progress)
  epoch_fn.lower(*args).compile()


def _rows(mesh: Mesh, examples, start: jax.Array, size: int):
  """(examples [size, ...], mask [size]) of rows start..start+size-1, split over the mesh.

  Rows past the end repeat the last example and get mask 0, so the shape stays fixed.
  """
  n = batch_size_of(examples)
  idx = jax.lax.with_sharding_constraint(start + jnp.arange(size), parallel.batch_sharded(mesh))
  rows = jax.tree.map(lambda x: x[jnp.minimum(idx, n - 1)], examples)
  return rows, (idx < n).astype(jnp.float32)


@functools.cache
def _full_batch_step(mesh: Mesh, chunk_size: int, vmapped: bool = False):
  def step_fn(state, examples):
    n = batch_size_of(examples)

    def chunk_sums(start):
      chunk, mask = _rows(mesh, examples, start, chunk_size)
      return loss_and_grad_sums(state.task, state.apply_fn, state.params, chunk, mask)

    starts = jnp.arange(0, n, chunk_size, dtype=jnp.int32)
    loss_sum, grad_sums = scan_sums(chunk_sums, starts)
    return apply_mean_gradient(state, loss_sum, grad_sums, n)

  if vmapped:
    step_fn = jax.vmap(step_fn, in_axes=(0, None))
  replicated = parallel.replicated(mesh)
  return jax.jit(step_fn, donate_argnums=0, in_shardings=replicated, out_shardings=replicated)


def full_batch_step(state: TrainState, examples, chunk_size: int = 32,
                    mesh: Mesh | None = None, replicas: int = 0):
  """One optimizer step on the mean loss over the whole set: the original's procedure.

  The gradient is summed over fixed-size chunks (the last one masked) in a `lax.scan`, so memory
  stays small; the step uses the gradient of the mean over all N examples. Small chunks stay in
  cache: on 2 CPU cores 32-image chunks ran 2x faster than 1000-image ones. With `replicas`, the
  state is stacked replicas (the full batch has no shuffle, so they differ by initialization).
  """
  if replicas == 1:  # The single seed's program (_one_by_one says why).
    state, metrics = full_batch_step(seeds.replica(state, 0), examples, chunk_size, mesh)
    return seeds.stack([state]), jax.tree.map(lambda x: x[None], metrics)
  mesh = mesh or parallel.data_mesh()
  chunk_size = parallel.padded_batch_size(chunk_size, mesh)
  state, examples = parallel.replicate((state, examples), mesh)
  return _full_batch_step(mesh, chunk_size, replicas > 1)(state, examples)


def train_full_batch_epoch(state: TrainState, examples, mesh: Mesh | None = None,
                           chunk_size: int = 32, replicas: int = 0,
                           replica_strategy: str | None = None) -> EpochResult:
  if _one_by_one(replicas, mesh or parallel.data_mesh(), replica_strategy):
    return _stacked_results([train_full_batch_epoch(seeds.replica(state, k), examples, mesh,
                                                    chunk_size) for k in range(replicas)])
  state, metrics = full_batch_step(state, examples, chunk_size=chunk_size, mesh=mesh,
                                   replicas=replicas)
  loss = to_host(metrics["loss"])
  return EpochResult(state, loss if replicas else float(loss), loss[..., None])


@functools.cache
def _eval_batch(mesh: Mesh, batch_size: int, with_predictions: bool, replicas: bool = False):
  def eval_fn(state, examples, start):
    batch, _ = _rows(mesh, examples, start, batch_size)  # evaluate() drops the padding.
    out = eval_step(state, batch)
    out.pop("loss")
    if not with_predictions:  # Not gathered onto every device when nobody wants them.
      return {"per_example_loss": out["per_example_loss"]}
    return out

  if replicas:
    eval_fn = jax.vmap(eval_fn, in_axes=(0, None, None))
  # Replicated outputs: every process can read the whole batch's results.
  replicated = parallel.replicated(mesh)
  return jax.jit(eval_fn, in_shardings=replicated, out_shardings=replicated)


def evaluate(state: TrainState, examples, *, batch_size: int = EVAL_BATCH_SIZE,
             with_predictions: bool = True, mesh: Mesh | None = None,
             replicas: int = 0,
             replica_strategy: str | None = None) -> dict[str, np.ndarray | float]:
  """Loss over all N examples (the mean of per-example losses) and, optionally, predictions.

  Fixed-shape batches; the padding of the last one is dropped before averaging. Returns NumPy
  arrays, the same in every process: "per_example_loss" [N] and the task's predictions (e.g.
  "reconstructions" [N, 32, 32, 3]; see `train.eval_step`). With `replicas=R` (a stacked state)
  every array has a leading replica axis and "loss" is [R].
  """
  mesh = mesh or parallel.data_mesh()
  if _one_by_one(replicas, mesh, replica_strategy):
    each = [evaluate(seeds.replica(state, k), examples, batch_size=batch_size,
                     with_predictions=with_predictions, mesh=mesh) for k in range(replicas)]
    return {key: np.stack([e[key] for e in each]) for key in each[0]}
  batch_size = parallel.padded_batch_size(batch_size, mesh)
  n = batch_size_of(examples)
  state, examples = parallel.replicate((state, examples), mesh)
  eval_fn = _eval_batch(mesh, batch_size, with_predictions, bool(replicas))
  outputs, in_flight = [], _InFlight()
  for start in range(0, n, batch_size):
    outputs.append(eval_fn(state, examples, np.int32(start)))
    in_flight.add(outputs[-1])
  axis = 1 if replicas else 0  # The examples' axis.
  first_n = (slice(None),) * axis + (slice(n),)
  result = {key: np.concatenate([np.asarray(o[key]) for o in outputs], axis)[first_n]
            for key in outputs[0]}
  result["per_example_loss"] = result["per_example_loss"].astype(np.float64)
  loss = result["per_example_loss"].mean(axis=-1)
  result["loss"] = loss if replicas else float(loss)
  return result

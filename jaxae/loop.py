"""Epochs over a device-resident dataset with fixed shapes: nothing recompiles after epoch one.

The whole split lives on the device; each step gathers its batch by index inside the jitted
function. The last partial batch is padded with index 0 and masked out, so every example counts
exactly once per epoch and every step has the same shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.train import TrainState, eval_step, per_example_mse, train_step


def epoch_key(seed: int, epoch: int) -> jax.Array:
  """The shuffling key of an epoch: a function of the seed and epoch number alone."""
  return jax.random.fold_in(jax.random.key(seed), epoch)


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size"))
def epoch_batches(key: jax.Array, num_examples: int, batch_size: int):
  """A shuffled epoch as (indices [S, B] int32, mask [S, B] float32), S = ceil(N / B)."""
  steps = math.ceil(num_examples / batch_size)
  pad = steps * batch_size - num_examples
  order = jax.random.permutation(key, num_examples).astype(jnp.int32)
  indices = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])
  mask = jnp.concatenate([jnp.ones((num_examples,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
  return indices.reshape(steps, batch_size), mask.reshape(steps, batch_size)


@functools.partial(jax.jit, donate_argnums=0)
def train_on_indices(state: TrainState, images_NHWC: jax.Array, indices_B: jax.Array,
                     mask_B: jax.Array):
  """`train_step` on the batch `images_NHWC[indices_B]` (gathered on the device)."""
  return train_step(state, images_NHWC[indices_B], mask_B)


@dataclasses.dataclass(frozen=True)
class EpochResult:
  state: TrainState
  loss: float  # Mean training loss over the epoch's examples.
  step_losses: np.ndarray  # [S], one per optimizer step (NaN-checking names the bad step).


def train_epoch(state: TrainState, images_NHWC: jax.Array, *, seed: int, epoch: int,
                batch_size: int) -> EpochResult:
  """One shuffled pass of minibatch steps. `state` is donated: use the returned one."""
  n = int(images_NHWC.shape[0])
  indices, mask = epoch_batches(epoch_key(seed, epoch), n, batch_size)
  losses = []
  for step in range(indices.shape[0]):
    state, metrics = train_on_indices(state, images_NHWC, indices[step], mask[step])
    losses.append(metrics["loss"])
  # One transfer per epoch: the Python loop never waits for the device.
  step_losses = np.asarray(jnp.stack(losses), np.float64)
  counts = np.asarray(mask.sum(axis=1), np.float64)
  return EpochResult(state, float(np.sum(step_losses * counts) / n), step_losses)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _chunk_loss_and_grad_sums(state: TrainState, images_NHWC: jax.Array, start: jax.Array,
                              loss_sum: jax.Array, grad_sum, chunk_size: int):
  n = images_NHWC.shape[0]
  idx = start + jnp.arange(chunk_size)
  mask = (idx < n).astype(jnp.float32)

  def chunk_loss_sum(params):
    _, per_example = per_example_mse(state.apply_fn, params, images_NHWC[jnp.minimum(idx, n - 1)])
    return jnp.sum(per_example * mask)

  loss, grads = jax.value_and_grad(chunk_loss_sum)(state.params)
  return loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)


@functools.partial(jax.jit, donate_argnums=0)
def _apply_mean_gradient(state: TrainState, loss_sum, grad_sum, n):
  state = state.apply_gradients(grads=jax.tree.map(lambda g: g / n, grad_sum))
  return state, {"loss": loss_sum / n}


def full_batch_step(state: TrainState, images_NHWC: jax.Array, chunk_size: int = 32):
  """One optimizer step on the mean loss over the whole set: the original's procedure.

  The gradient is summed over fixed-size chunks (the last one masked) so memory stays small; the
  step uses the gradient of the mean over all N examples. Small chunks stay in cache: on 2 CPU
  cores 32-image chunks ran 2x faster than 1000-image ones. A Python loop over the chunks, not
  `lax.scan`: XLA:CPU runs convolutions inside a while loop about 8x slower.
  """
  n = int(images_NHWC.shape[0])
  loss_sum = jnp.zeros((), jnp.float32)
  grad_sum = jax.tree.map(jnp.zeros_like, state.params)
  for start in range(0, n, chunk_size):
    loss_sum, grad_sum = _chunk_loss_and_grad_sums(state, images_NHWC, jnp.int32(start),
                                                   loss_sum, grad_sum, chunk_size)
  return _apply_mean_gradient(state, loss_sum, grad_sum, jnp.float32(n))


def train_full_batch_epoch(state: TrainState, images_NHWC: jax.Array) -> EpochResult:
  state, metrics = full_batch_step(state, images_NHWC)
  loss = float(metrics["loss"])
  return EpochResult(state, loss, np.array([loss]))


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _eval_batch(state: TrainState, images_NHWC: jax.Array, start: jax.Array, batch_size: int):
  n = images_NHWC.shape[0]
  idx = start + jnp.arange(batch_size)
  return eval_step(state, images_NHWC[jnp.minimum(idx, n - 1)])


def evaluate(state: TrainState, images_NHWC: jax.Array, *, batch_size: int = 500,
             with_reconstructions: bool = True) -> dict[str, np.ndarray | float]:
  """Loss over all N examples (the mean of per-example MSEs) and, optionally, reconstructions.

  Fixed-shape batches; the padding of the last one is dropped before averaging.
  """
  n = int(images_NHWC.shape[0])
  per_example, recons = [], []
  for start in range(0, n, batch_size):
    out = _eval_batch(state, images_NHWC, jnp.int32(start), batch_size)
    keep = min(batch_size, n - start)
    per_example.append(out["per_example_loss"][:keep])
    if with_reconstructions:
      recons.append(out["reconstructions"][:keep])
  per_example = np.asarray(jnp.concatenate(per_example), np.float64)
  result = {"loss": float(per_example.mean()), "per_example_loss": per_example}
  if with_reconstructions:
    result["reconstructions"] = jnp.concatenate(recons)
  return result

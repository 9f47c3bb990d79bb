"""Pure training and evaluation steps. No globals, no hidden randomness, no side effects.

    state = create_train_state(jax.random.key(0))
    state, metrics = jax.jit(train_step)(state, images_BHWC)
    metrics = jax.jit(eval_step)(state, images_BHWC)

Each works under `jax.jit`, `jax.lax.scan` and inside a caller's own jitted code.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct
from flax.training import train_state

from jaxae.config import Config
from jaxae.models import check_model_names, model_from_config
from jaxae.optimizers import check_optimizer_names, make_optimizer
from jaxae.tasks import (IMAGE_SHAPE, RECONSTRUCT, check_task_names, per_example_mse,
                         task_from_config)
from jaxae.weights import expected_shapes, param_shapes

__all__ = ["IMAGE_SHAPE", "TrainState", "check_config", "create_train_state", "eval_step",
           "per_example_mse", "train_step"]


class TrainState(train_state.TrainState):
  """flax's TrainState plus the task (jaxae/tasks) whose loss `train_step` computes; static,
  like `apply_fn`: part of every jit cache key, never of a checkpoint."""

  task: Any = struct.field(pytree_node=False, default=RECONSTRUCT)


def check_config(config: Config) -> Config:
  """`config`, or ValueError naming the first bad field: what `create_train_state` would
  refuse, checked without building anything. Each set of names is checked by its own module."""
  config.validate()
  check_task_names(config)
  check_model_names(config)
  check_optimizer_names(config)
  return config


def create_train_state(rng: jax.Array, config: Config | None = None, *,
                       steps_per_epoch: int | None = None) -> TrainState:
  """Model parameters and optimizer state; with no config, the original experiment's.

  `steps_per_epoch` is needed by schedules that decay over the run; a template to restore a
  checkpoint into may pass 1. Equal configs share one `apply_fn` and `tx` object (static parts of
  the state), so jitted functions compiled for one state are reused for the next.
  """
  _check_rng(rng)
  config = config or Config()
  task = task_from_config(config)
  model = model_from_config(config, task.out_channels)
  tx = make_optimizer(config, steps_per_epoch)
  # Traced (the caller's jit, vmap or scan): no compiler options, which only a top-level jit takes.
  params, opt_state = _initializer(model, tx, isinstance(rng, jax.core.Tracer))(rng)
  # An int32 array rather than Python's 0: the same type every step (no retrace) and checkpointable.
  return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params, tx=tx,
                    opt_state=opt_state, task=task)


def _check_rng(rng) -> None:
  # Flax's own message for a seed passed as the key names a module and a tracer, not the fix.
  shape, dtype = getattr(rng, "shape", None), getattr(rng, "dtype", None)
  if dtype is not None and (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
                            or (dtype == jnp.uint32 and tuple(shape) == (2,))):
    return
  got = f"{dtype} {list(shape)}" if dtype is not None else type(rng).__name__
  raise TypeError(f"create_train_state takes a random key, e.g. jax.random.key(seed), as its "
                  f"first argument; got {got}.")


@functools.cache
def _initializer(model, tx, traced: bool = False) -> Callable[[jax.Array], tuple[Any, Any]]:
  """`rng -> (params, opt_state)` as one compiled program per model and optimizer: op by op,
  every parameter's initializer would compile a program of its own. The values are bitwise
  `model.init`'s (tests/test_steps.py). On CPU at LLVM's optimization level 1: the program runs
  once, and level 2 spends longer compiling its threefry rounds for the same bits."""
  def init(rng):
    params = model.init(rng, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))["params"]
    return params, tx.init(params)
  if jax.default_backend() == "cpu" and not traced:
    return jax.jit(init, compiler_options={"xla_backend_optimization_level": 1})
  return jax.jit(init)


def batch_size_of(batch) -> int:
  """The leading (example) dimension of a batch: an image array or a task's dict of arrays."""
  return int(jax.tree.leaves(batch)[0].shape[0])


def check_mask(mask_B, batch) -> None:
  """Refuses a mask that is not one weight per example of `batch`: broadcasting would otherwise
  fail with XLA's message, or (a [1] mask) weigh every example alike without a word."""
  size = batch_size_of(batch)
  if mask_B is not None and tuple(jnp.shape(mask_B)) != (size,):
    raise ValueError(f"mask_B must hold one weight per example, shape [{size}] for this batch "
                     f"(1 real, 0 padding); got shape {list(jnp.shape(mask_B))}.")


def masked_mean(values_B, mask_B=None):
  """Mean over the examples where mask is 1 (all of them without a mask)."""
  if mask_B is None:
    return jnp.mean(values_B)
  mask_B = mask_B.astype(values_B.dtype)
  return jnp.sum(values_B * mask_B) / jnp.maximum(jnp.sum(mask_B), 1.0)


def loss_and_grad_sums(task, apply_fn, params, batch, mask_B: jax.Array,
                       microbatch_size: int | None = None):
  """(sum of mask * per-example loss, its gradient), `microbatch_size` examples at a time.

  Microbatches run in a `lax.scan`, so each one's activations stay in cache; the batch is padded
  with masked examples to whole microbatches. Example j of microbatch c is row
  j * num_microbatches + c, so a batch split over devices gives every device a share of each.
  """
  def sums(params, batch, mask):
    _, per_example = task.loss(apply_fn, params, batch)
    return jnp.sum(per_example * mask)

  size = batch_size_of(batch)
  check_mask(mask_B, batch)
  if isinstance(microbatch_size, jax.core.Tracer):
    raise ValueError("microbatch_size decides the step's shapes, so it must be a static Python "
                     "int: jit train_step with static_argnames=('microbatch_size',), e.g. "
                     "jax.jit(train_step, static_argnames='microbatch_size').")
  if microbatch_size is not None and (not isinstance(microbatch_size, int) or microbatch_size <= 0):
    raise ValueError(f"microbatch_size must be a positive int or None, got {microbatch_size!r}.")
  if microbatch_size is None or microbatch_size >= size:
    return jax.value_and_grad(sums)(params, batch, mask_B)
  count = -(-size // microbatch_size)
  pad = count * microbatch_size - size

  def split(x):  # [B, ...] -> [count, microbatch, ...], padded.
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    return x.reshape(microbatch_size, count, *x.shape[1:]).swapaxes(0, 1)

  return scan_sums(lambda inputs: jax.value_and_grad(sums)(params, *inputs),
                   (jax.tree.map(split, batch), split(mask_B)))


def scan_sums(loss_and_grads_fn, xs):
  """Sums `loss_and_grads_fn(x) -> (loss, grads)` over the leading axis of xs, one x at a time
  in a `lax.scan`."""
  def add(totals, x):
    return jax.tree.map(jnp.add, totals, loss_and_grads_fn(x)), None

  # The running sums in the dtypes the function returns (a float64 batch under x64 gives a
  # float64 loss beside float32 gradients).
  first = jax.eval_shape(loss_and_grads_fn, jax.tree.map(lambda x: x[0], xs))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
  return jax.lax.scan(add, zeros, xs)[0]


def apply_mean_gradient(state: TrainState, loss_sum, grad_sums, count):
  """The optimizer step on the mean gradient over `count` examples, given the sums."""
  grads = jax.tree.map(lambda g: g / count, grad_sums)
  return state.apply_gradients(grads=grads), {"loss": loss_sum / count}


def train_step(state: TrainState, batch, mask_B: jax.Array | None = None, *,
               microbatch_size: int | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the loss of the state's task (MSE of the reconstructions by default).

  Args:
    state: the TrainState from `create_train_state`.
    batch: what the state's task trains on (`state.task.examples`, batched): for "reconstruct"
      float32 [B, 32, 32, 3] normalized mean images; for "separate" {"mixture": those images,
      "digit": [B, 32, 32, 1] grey digits in [0, 1]}.
    mask_B: optional [B] weights, 1 for real examples and 0 for padding.
    microbatch_size: if smaller than B, the gradient is summed over microbatches of this size
      (`loss_and_grad_sums`). It decides shapes: under `jax.jit`, make it static.

  Returns:
    (new_state, {"loss": mean loss over the unmasked batch before the step}). A batch of padding
    alone is no step: the state comes back unchanged and the loss is 0.
  """
  if mask_B is None:
    mask_B = jnp.ones((batch_size_of(batch),), jnp.float32)
  new_state, metrics = minibatch_step(state, batch, mask_B, microbatch_size=microbatch_size)
  real = jnp.sum(mask_B) > 0
  return jax.tree.map(lambda new, old: jnp.where(real, new, old), new_state, state), metrics


def minibatch_step(state: TrainState, batch, mask_B: jax.Array, *,
                   microbatch_size: int | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_step` without its guard for a batch of padding alone, for the epoch's batches, which
  all hold real examples: the guard's select changes XLA's floating-point order, and the
  published runs reproduce bitwise without it (tests/test_pretrained.py)."""
  mask_B = mask_B.astype(jnp.float32)
  loss_sum, grad_sums = loss_and_grad_sums(state.task, state.apply_fn, state.params, batch, mask_B,
                                           microbatch_size)
  return apply_mean_gradient(state, loss_sum, grad_sums, jnp.maximum(jnp.sum(mask_B), 1.0))


def eval_step(params_or_state: Any, batch, mask_B: jax.Array | None = None, *,
              apply_fn: Callable[..., jax.Array] | None = None,
              task: Any = None) -> dict[str, jax.Array]:
  """Loss and predictions, without changing anything.

  Args:
    params_or_state: a TrainState, or a params tree (then `apply_fn`, default the default
      Autoencoder's, computes the model and `task`, default reconstruct, the loss).
    batch, mask_B: as for `train_step`.

  Returns:
    {"loss": scalar, "per_example_loss": [B], and the task's predictions}: for "reconstruct"
    "reconstructions" [B, 32, 32, 3]; for "separate" "digit" [B, 32, 32, 1] and "photo"
    [B, 32, 32, 3], in [0, 1] units and consistent with the mean image.
  """
  if isinstance(params_or_state, TrainState):
    params, apply_fn, task = (params_or_state.params, params_or_state.apply_fn,
                              params_or_state.task)
  else:
    params, task = params_or_state, task or RECONSTRUCT
    if apply_fn is None:
      _check_default_model_params(params)
      apply_fn = model_from_config(Config()).apply
  check_mask(mask_B, batch)
  predictions, per_example = task.loss(apply_fn, params, batch)
  return {"loss": masked_mean(per_example, mask_B), "per_example_loss": per_example,
          **predictions}


def _check_default_model_params(params) -> None:
  """Refuses a bare params tree that is not the default model's (it would be evaluated as one)."""
  if param_shapes(params) != expected_shapes(Config()):
    raise ValueError("eval_step got a params tree that is not the default model's; pass its "
                     "model's apply function (apply_fn=model.apply) or a TrainState.")


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))



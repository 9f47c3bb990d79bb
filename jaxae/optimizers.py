"""A config's optimizer: optax's, with a learning-rate schedule, gradient clipping, weight decay.

    tx = make_optimizer(config, steps_per_epoch)

The defaults are the original's: Adam at 1e-3, constant, no clipping, no decay (then `tx` is
`optax.adam(1e-3)` itself, and its state has the same structure as before these options).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import optax

from jaxae.config import Config

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
}

LR_SCHEDULES = ("constant", "cosine")


def make_optimizer(config: Config,
                   steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """The config's optimizer; one object per distinct setting (see `train.create_train_state`).

  In order, for each step:
    1. `grad_clip_norm > 0`: the gradient is rescaled to at most that global L2 norm
       (`optax.clip_by_global_norm`).
    2. The optimizer's update at the scheduled learning rate. "constant" is the original's;
       "cosine" warms up linearly over `config.warmup_steps` steps and then decays to 0 by the last
       step of `config.epochs` epochs of `steps_per_epoch` steps.
    3. `weight_decay > 0`: decoupled weight decay (Loshchilov & Hutter's AdamW, and PyTorch's
       `AdamW`): every parameter, biases included, shrinks by learning rate x weight_decay x its
       value, whatever the optimizer. With "adam" this is exactly `optax.adamw`.

  Raises:
    ValueError: an unknown optimizer or schedule (`check_optimizer_names`), or "cosine" without
      `steps_per_epoch`.
  """
  check_optimizer_names(config)
  total = None
  if config.lr_schedule != "constant":
    if not steps_per_epoch or steps_per_epoch <= 0:
      raise ValueError(f"lr_schedule={config.lr_schedule!r} needs the run's steps_per_epoch "
                       "(its steps decay over config.epochs epochs); to run a params file "
                       "without training it, use jaxae.load_model.")
    total = config.epochs * steps_per_epoch
  return _optimizer(config.optimizer, config.learning_rate, config.lr_schedule,
                    config.warmup_steps, total, float(config.grad_clip_norm),
                    float(config.weight_decay))


def check_optimizer_names(config: Config) -> None:
  """Raises ValueError (one line, naming the field) unless the config's optimizer and schedule
  are known."""
  for field, names in (("optimizer", sorted(OPTIMIZERS)), ("lr_schedule", LR_SCHEDULES)):
    value = getattr(config, field)
    if value not in names:
      raise ValueError(f"{field} must be one of {', '.join(names)}, got {value!r}.")


@functools.cache
def _optimizer(name: str, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
               total_steps: int | None = None, grad_clip_norm: float = 0.0,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
  rate = learning_rate
  if schedule != "constant":
    warmup = min(warmup_steps, total_steps - 1)
    rate = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else learning_rate, peak_value=learning_rate,
        warmup_steps=warmup, decay_steps=total_steps, end_value=0.0)
  # Options left at their defaults add no transformation, so that the optimizer state of a run
  # without them keeps its structure (and old checkpoints stay restorable).
  parts = []
  if grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  parts.append(OPTIMIZERS[name](rate))
  if weight_decay > 0:
    parts.append(decoupled_weight_decay(weight_decay, rate))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def decoupled_weight_decay(weight_decay: float, learning_rate: float | optax.Schedule
                           ) -> optax.GradientTransformation:
  """Adds -learning_rate(step) * weight_decay * params to the updates.

  Applied after an optimizer's own (already scaled) update, so the decay does not pass through
  its preconditioning (Adam's second moments), as in AdamW. The schedule's step count is its own,
  kept in step with the optimizer's because both advance once per update.
  """
  scale = optax.scale_by_learning_rate(learning_rate)

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("decoupled_weight_decay needs the params (optax update(..., params)).")
    decay, state = scale.update(jax.tree.map(lambda p: weight_decay * p, params), state)
    return jax.tree.map(lambda u, d: u + d, updates, decay), state

  return optax.GradientTransformation(scale.init, update)

"""A config's optimizer: optax's, with a learning-rate schedule, gradient clipping, weight decay.

    tx = make_optimizer(config, steps_per_epoch)

The defaults are the original's: Adam at 1e-3, constant, no clipping, no decay (then `tx` is
`optax.adam(1e-3)` itself, and its state has the same structure as before these options).

"muon" is optax.contrib.muon's algorithm (Jordan et al., 2024) for the convolution kernels, with
Adam for the biases, computed without its vmap (`scale_by_muon`): it trains the seed model to
40.5 dB in a fraction of Adam's steps (RESULTS.md, "Time to quality").
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxae.config import Config

# The optimizers of one learning rate; "muon" (two rates) is built by `muon` below.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "sgd": optax.sgd,
    "rmsprop": optax.rmsprop,
}
OPTIMIZER_NAMES = (*sorted(OPTIMIZERS), "muon")

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
  check_schedule(config, steps_per_epoch)
  total = config.epochs * steps_per_epoch if config.lr_schedule != "constant" else None
  return _optimizer(config.optimizer, config.learning_rate, config.lr_schedule,
                    config.warmup_steps, total, float(config.grad_clip_norm),
                    float(config.weight_decay), float(config.muon_learning_rate))


def check_optimizer_names(config: Config) -> None:
  """Raises ValueError (one line, naming the field) unless the config's optimizer and schedule
  are known."""
  for field, names in (("optimizer", OPTIMIZER_NAMES), ("lr_schedule", LR_SCHEDULES)):
    value = getattr(config, field)
    if value not in names:
      raise ValueError(f"{field} must be one of {', '.join(names)}, got {value!r}.")
  if (config.optimizer == "muon") != (config.muon_learning_rate > 0):
    raise ValueError("muon_learning_rate must be positive with optimizer='muon' (the kernels' "
                     "rate; learning_rate is the biases') and 0 with any other optimizer, got "
                     f"{config.muon_learning_rate!r} with optimizer={config.optimizer!r}.")


def check_schedule(config: Config, steps_per_epoch: int | None) -> None:
  """Raises ValueError (one line) unless the config's schedule fits a run of `steps_per_epoch`
  steps per epoch: "cosine" needs the count, and a warmup shorter than the whole run."""
  if config.lr_schedule == "constant":
    return
  if not steps_per_epoch or steps_per_epoch <= 0:
    raise ValueError(f"lr_schedule={config.lr_schedule!r} needs the run's steps_per_epoch "
                     "(its steps decay over config.epochs epochs); to run a params file "
                     "without training it, use jaxae.load_model.")
  total = config.epochs * steps_per_epoch
  if config.warmup_steps >= total:
    raise ValueError(f"warmup_steps={config.warmup_steps} is not smaller than the run's "
                     f"{total:,} optimizer steps ({config.epochs} epoch"
                     f"{'s' if config.epochs > 1 else ''} of {steps_per_epoch:,}): the schedule "
                     "would never decay; lower it.")


@functools.cache
def _optimizer(name: str, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
               total_steps: int | None = None, grad_clip_norm: float = 0.0,
               weight_decay: float = 0.0,
               muon_learning_rate: float = 0.0) -> optax.GradientTransformation:
  def scheduled(peak):
    if schedule == "constant":
      return peak
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else peak, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=0.0)
  rate = scheduled(learning_rate)
  # Options left at their defaults add no transformation, so that the optimizer state of a run
  # without them keeps its structure (and old checkpoints stay restorable).
  parts = []
  if grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if name == "muon":
    parts.append(muon(scheduled(muon_learning_rate), rate))
  else:
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


# Newton-Schulz coefficients of optax.contrib.muon (and of Jordan's Muon): a quintic iteration
# that takes every singular value near 1 in 5 steps.
NS_COEFFS = (3.4445, -4.775, 2.0315)


def orthogonalized(x_MN: jax.Array, steps: int = 5, eps: float = 1e-8) -> jax.Array:
  """A matrix with the singular vectors of `x_MN` and singular values near 1 (Newton-Schulz).

  optax.contrib.orthogonalize_via_newton_schulz's function for a 2-D input, on the shorter side,
  without its vmap: XLA:CPU runs batch-of-one matmuls several times slower than plain ones,
  which made a batch-32 Muon step twice as long as Adam's (docs/speed.md).
  """
  wide = x_MN.shape[0] > x_MN.shape[1]
  x = x_MN.T if wide else x_MN
  x = x / (jnp.linalg.norm(x) + eps)
  a, b, c = NS_COEFFS
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if wide else x


def scale_by_muon(beta: float = 0.95, ns_steps: int = 5, eps: float = 1e-8
                  ) -> optax.GradientTransformation:
  """optax.contrib.scale_by_muon followed by its scale_by_shape, for [H, W, in, out] kernels.

  Nesterov momentum with bias correction, each kernel's update seen as the [H*W*in, out]
  matrix, orthogonalized (`orthogonalized`) and scaled by sqrt(max(1, out / (H*W*in))). The
  same numbers as optax's (tests/test_optimizers.py), faster on CPU.
  """
  def init(params):
    return optax.contrib.MuonState(count=jnp.zeros([], jnp.int32),
                                   mu=jax.tree.map(jnp.zeros_like, params),
                                   ns_coeffs=jnp.asarray(NS_COEFFS))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: (1 - beta) * g + beta * m, updates, state.mu)
    count = state.count + 1
    # Nesterov: beta * (bias-corrected next moment) + (1 - beta) * (bias-corrected gradient).
    mu_hat = jax.tree.map(lambda m, g: beta * m / (1 - beta ** (count + 1))
                          + (1 - beta) * g / (1 - beta ** count), mu, updates)

    def direction(m):
      matrix = m.reshape(-1, m.shape[-1])
      scale = max(1.0, matrix.shape[1] / matrix.shape[0]) ** 0.5
      return (scale * orthogonalized(matrix, ns_steps, eps)).reshape(m.shape)

    return jax.tree.map(direction, mu_hat), optax.contrib.MuonState(count, mu, state.ns_coeffs)

  return optax.GradientTransformation(init, update)


def muon(learning_rate, adam_learning_rate) -> optax.GradientTransformation:
  """optax.contrib.muon's optimizer for convolution models: every 4-D kernel [H, W, in, out] by
  Muon at `learning_rate`, every other parameter (the biases) by Nesterov AdamW (no decay) at
  `adam_learning_rate`, as optax.contrib.muon(learning_rate, adam_learning_rate=...,
  muon_weight_dimension_numbers=MuonDimensionNumbers((0, 1, 2), (3,)) for kernels) computes.
  """
  def labels(params):
    return jax.tree.map(lambda p: "muon" if p.ndim == 4 else "adam", params)
  return optax.partition(
      {"muon": optax.chain(scale_by_muon(), optax.scale_by_learning_rate(learning_rate)),
       "adam": optax.adamw(adam_learning_rate, eps=1e-8, weight_decay=0.0, nesterov=True)},
      labels)

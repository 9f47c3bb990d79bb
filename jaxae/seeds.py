"""Many seeds in one program: N independent replicas of a run as one stacked TrainState.

Replica k of a run with `Config.num_seeds = N` is the run with seed `config.seed + k`: its own
initialization and its own shuffle order, and it computes what that single-seed run computes
(tests/test_seeds.py). Its TrainState is one seed's with a leading axis of N on every array (step,
params, optimizer state); `apply_fn`, `tx` and `task` are static and shared. The loop
(jaxae/loop.py, `replicas=N`) trains them on the data mesh as a single seed trains: each
replica's batch is split over the devices. On accelerators the epoch's program is vmapped over the
replica axis (one batched program); on CPU, where batching replicas was slower than running them
in turn (jaxae/platforms.py says why), the single-seed program runs once per replica.

Why the replica axis is not a mesh axis of its own: the models are small (84,000 parameters for
the seed model) and the data axis already splits every batch over the devices; keeping all
replicas on every device needs no device count that N divides.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import Config, is_number
from jaxae.steps import TrainState, create_train_state


def seeds_of(config: Config) -> list[int]:
  """The replicas' seeds: seed, seed + 1, ..., seed + num_seeds - 1."""
  return [config.seed + k for k in range(config.num_seeds)]


def create_train_states(config: Config, *, steps_per_epoch: int | None = None) -> TrainState:
  """The stacked TrainState of the config's `num_seeds` replicas (replica k: seed + k).

  Each replica is initialized exactly as `create_train_state(jax.random.key(seed + k), config)`.
  """
  return stack([create_train_state(jax.random.key(seed), config, steps_per_epoch=steps_per_epoch)
                for seed in seeds_of(config)])


def stack(states: Sequence[TrainState]) -> TrainState:
  """States of one model and optimizer -> one state with a leading replica axis."""
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *states)


def replica(state: TrainState, k: int) -> TrainState:
  """Replica k of a stacked state, as a single-seed TrainState."""
  return jax.tree.map(lambda x: x[k], state)


def spread(values: Sequence[float]) -> dict[str, float]:
  """Mean, standard deviation (sample, ddof=1; 0 for one value), min and max of `values`."""
  v = np.asarray(values, np.float64)
  std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
  return {"mean": float(v.mean()), "std": std, "min": float(v.min()), "max": float(v.max())}


def spread_of(finals: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The replicas' final metrics -> the spread of every number across them, same nesting.

  Numbers equal in every replica (e.g. the test image count, the trivial estimate's metrics)
  keep their value; other numbers become `spread(...)`; anything else is taken from replica 0.
  """
  out: dict[str, Any] = {}
  for key, first in finals[0].items():
    values = [f[key] for f in finals]
    if isinstance(first, dict):
      out[key] = spread_of(values)
    elif is_number(first) and all(is_number(v) for v in values):
      out[key] = first if all(v == first for v in values) else spread(values)
    else:
      out[key] = first
  return out


def replica_history(history: Sequence[dict[str, Any]], k: int) -> list[dict[str, Any]]:
  """Replica k's per-epoch losses from a multi-seed history (whose losses are per-replica lists)."""
  return [{"epoch": h["epoch"], "train_loss": h["train_loss"][k], "test_loss": h["test_loss"][k]}
          for h in history]


def replicas_of(config: Config) -> int:
  """The loop's `replicas` argument for the config: 0 (a plain state) for one seed, else N.

  One seed keeps the state, checkpoints and files of a single run exactly as they always were.
  """
  return config.num_seeds if config.num_seeds > 1 else 0


def initial_state(config: Config, *, steps_per_epoch: int | None = None) -> TrainState:
  """The run's initial state: one seed's TrainState, or the stacked state of its replicas."""
  if replicas_of(config):
    return create_train_states(config, steps_per_epoch=steps_per_epoch)
  return create_train_state(jax.random.key(config.seed), config, steps_per_epoch=steps_per_epoch)


def one_replica(state: TrainState, replicas: int) -> TrainState:
  """A single-seed state with the run's model: replica 0 of a stacked state, else `state`."""
  return replica(state, 0) if replicas else state


def first_non_finite(step_losses: np.ndarray) -> tuple[int, int | None] | None:
  """(step index, replica or None) of the first non-finite step loss, or None if all are finite.

  `step_losses` is [S], or [R, S] for replicas (then the lowest replica at the earliest step).
  """
  bad = ~np.isfinite(step_losses)
  if not bad.any():
    return None
  if bad.ndim == 1:
    return int(np.argmax(bad)), None
  step = int(np.argmax(bad.any(axis=0)))
  return step, int(np.argmax(bad[:, step]))

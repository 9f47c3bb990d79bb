"""Many seeds in one program: N independent replicas of a run as one stacked TrainState.

Replica k of a run with `Config.num_seeds = N` is the run with seed `config.seed + k`: its own
initialization and its own shuffle order, and it computes what that single-seed run computes
(tests/test_seeds.py). Its TrainState is one seed's with a leading axis of N on every array (step,
params, optimizer state); `apply_fn`, `tx` and `task` are static and shared. A run holds its
state this way for any N, one seed being N = 1: one representation, so the run's code has no
second case; only the files a run of one seed writes (metrics.json, params.msgpack) keep the
single seed's form they always had. The loop (jaxae/loop.py, `replicas=N`) trains the replicas on
the data mesh as a single seed trains: each replica's batch is split over the devices. One replica
is taken out and runs the single-seed program; several, on accelerators, one program vmapped over
the replica axis; on CPU, where batching replicas was slower than running them in turn
(jaxae/platforms.py says why), the single-seed program once per replica.

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
from jaxae.weights import on_host


def seeds_of(config: Config) -> list[int]:
  """The replicas' seeds: seed, seed + 1, ..., seed + num_seeds - 1."""
  return [config.seed + k for k in range(config.num_seeds)]


def create_train_states(config: Config, *, steps_per_epoch: int | None = None) -> TrainState:
  """The stacked TrainState of the config's `num_seeds` replicas (replica k: seed + k), also of
  one: a run's state (jaxae/run/train_and_evaluate.py).

  Each replica is initialized exactly as `create_train_state(jax.random.key(seed + k), config)`.
  """
  return stack([create_train_state(jax.random.key(seed), config, steps_per_epoch=steps_per_epoch)
                for seed in seeds_of(config)])


def saved_params(params_R: Any, num_seeds: int) -> Any:
  """A run's stacked parameters in the params file's form (weights.save_params): one seed's
  without the replica axis, as single-seed files always were."""
  return params_R if num_seeds > 1 else jax.tree.map(lambda x: on_host(x)[0], params_R)


def stacked_params(params: Any, num_seeds: int) -> Any:
  """A params file's parameters (weights.load_params) with a run's replica axis."""
  return params if num_seeds > 1 else jax.tree.map(
      lambda x: jax.device_put(np.asarray(x)[None]), params)


def stack(states: Sequence[TrainState]) -> TrainState:
  """States of one model and optimizer -> one state with a leading replica axis."""
  return _stack(list(states))


def replica(state: TrainState, k: int) -> TrainState:
  """Replica k of a stacked state, as a single-seed TrainState."""
  return _replica(state, k)


# Each a program for the whole state: op by op, every array shape would compile its own (and the
# loop takes a run's replicas out and stacks them back every epoch).
@jax.jit
def _stack(states: list[TrainState]) -> TrainState:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


@jax.jit
def _replica(state: TrainState, k) -> TrainState:
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


def first_non_finite(step_losses_RS: np.ndarray) -> tuple[int, int] | None:
  """(step index, replica) of the first non-finite step loss (the lowest replica at the earliest
  step), or None if all are finite."""
  bad = ~np.isfinite(step_losses_RS)
  if not bad.any():
    return None
  step = int(np.argmax(bad.any(axis=0)))
  return step, int(np.argmax(bad[:, step]))


# What a run used before every run's state was stacked (one seed as a stack of one).
_REMOVED = {"initial_state": "create_train_states(config) (one seed: a stack of one replica)",
            "replicas_of": "config.num_seeds (the loop takes replicas=N >= 1 for a stacked state)",
            "one_replica": "replica(state, 0)"}


def __getattr__(name: str):
  if name in _REMOVED:
    raise AttributeError(f"jaxae.seeds.{name} was removed; use {_REMOVED[name]}.")
  raise AttributeError(f"module 'jaxae.seeds' has no attribute {name!r}")

"""Many seeds as one lifting: any one-seed function of jaxae/loop.py over a stacked TrainState.

Replica k of a run with `Config.num_seeds = N` is the run with seed `config.seed + k`: its own
initialization and its own shuffle, and it computes what that single-seed run computes
(tests/test_seeds.py). Its state is one seed's with a leading axis of N on every array; `apply_fn`,
`tx` and `task` are static and shared. A run holds its state this way for any N, one seed being
N = 1; only the files of a one-seed run (metrics.json, params.msgpack) keep the single seed's form.

    state_R, losses_RS = over_replicas(train_epoch, state_R, examples, epoch, seed=0,
                                       strategy="vmap", batch_size=32)

`over_replicas` runs the replicas as one vmapped program ("vmap") or the one-seed program once per
replica ("loop"); jaxae/platforms.py chooses. The replica axis is not a mesh axis: the models are
small, and keeping every replica on every device needs no device count that N divides.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

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


def over_replicas(fn: Callable[..., Any], state_R: TrainState, *args: Any, strategy: str,
                  seed: int | None = None, **static: Any) -> Any:
  """`fn(state, *args, **static)` for each replica of the stacked `state_R`, its outputs stacked.

  `fn` is one of jaxae.loop's one-seed functions (any traceable function of one TrainState).
  With `seed`, replica k also gets `seed=seed + k` (its own shuffle). `strategy` "vmap": one
  program, `fn` vmapped over the replica axis (`static` must be hashable: it keys the program's
  cache); "loop": `fn` itself on each replica in turn, so one replica computes bitwise what a
  single seed does.
  """
  replicas = int(state_R.step.shape[0])
  if strategy == "loop":
    return _stack([fn(_replica(state_R, k), *args, **static,
                      **({} if seed is None else {"seed": seed + k})) for k in range(replicas)])
  if strategy != "vmap":
    raise ValueError(f"strategy must be 'vmap' or 'loop', got {strategy!r}.")
  seeds = None if seed is None else jnp.uint32(seed) + jnp.arange(replicas, dtype=jnp.uint32)
  program = _vmapped(fn, seed is not None, len(args), tuple(sorted(static.items())))
  return program(state_R, seeds, *args)


@functools.cache
def _vmapped(fn, with_seed: bool, num_args: int, static: tuple):
  def one(state, seed, *args):
    return fn(state, *args, **dict(static), **({"seed": seed} if with_seed else {}))
  return jax.jit(jax.vmap(one, in_axes=(0, 0 if with_seed else None) + (None,) * num_args))


def stack(states: Sequence[TrainState]) -> TrainState:
  """States of one model and optimizer -> one state with a leading replica axis."""
  return _stack(list(states))


def replica(state: TrainState, k: int) -> TrainState:
  """Replica k of a stacked state, as a single-seed TrainState."""
  return _replica(state, k)


# Each one program for the whole tree: op by op, every array shape would compile its own.
@jax.jit
def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


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

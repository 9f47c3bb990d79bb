"""Steps reported to the host while a compiled epoch runs: a `scan` to give `loop.train_epoch`.

    reports = step_reports.every(15)
    with reports.to(lambda done: print(done, "steps done")):
      state, losses = train_epoch(state, examples, epoch, seed=0, batch_size=32,
                                       scan=reports.scan)

The steps compute what `jax.lax.scan` computes; every `every` steps a `jax.debug.callback` tells
the listener how many are done. One `StepReports` per interval (`every`), so the epoch program
that holds it compiles once and each epoch's listener is attached while it runs.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


class StepReports:
  """A scan reporting every `every` steps to the listener attached with `to`."""

  def __init__(self, every: int):
    self.every = every
    self._listener: Callable[[int], None] | None = None
    self._lock = threading.Lock()

  def scan(self, step, carry, xs):
    """`jax.lax.scan(step, carry, xs)` as a scan of scans of `every` steps (and one of the rest),
    each chunk followed by its report: the same steps, and no report runs ahead of the work."""
    total = jax.tree.leaves(xs)[0].shape[0]
    chunks = total // self.every

    def chunk(carry, chunk_xs):
      done, xs_chunk = chunk_xs  # The steps done once this chunk's are.
      carry, ys = jax.lax.scan(step, carry, xs_chunk)
      jax.debug.callback(self._heard, done, ys)
      return carry, ys

    head = jax.tree.map(lambda x: x[:chunks * self.every].reshape(chunks, self.every,
                                                                  *x.shape[1:]), xs)
    ends = jnp.arange(1, chunks + 1, dtype=jnp.int32) * self.every
    carry, head_ys = jax.lax.scan(chunk, carry, (ends, head))
    ys = [jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), head_ys)]
    if total > chunks * self.every:
      carry, tail_ys = jax.lax.scan(step, carry,
                                    jax.tree.map(lambda x: x[chunks * self.every:], xs))
      ys.append(tail_ys)
    return carry, jax.tree.map(lambda *y: jnp.concatenate(y), *ys)

  def _heard(self, done, _after=None) -> None:
    # Replicas run as one vmapped program report together: the largest count is news.
    with self._lock:
      listener = self._listener
    if listener is not None:
      listener(int(np.max(done)))

  @contextlib.contextmanager
  def to(self, listener: Callable[[int], None]):
    """Attaches `listener(steps_done)` while the block runs; every report is heard by its end."""
    with self._lock:
      self._listener = listener
    try:
      yield self
    finally:
      jax.effects_barrier()
      with self._lock:
        self._listener = None


@functools.cache
def every(steps: int) -> StepReports:
  """The StepReports of an interval, one per interval: programs that hold it compile once."""
  return StepReports(steps)


def interval(steps: int) -> int:
  """How often an epoch of `steps` steps reports: about 100 times."""
  return max(1, steps // 100)

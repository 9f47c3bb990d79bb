"""Orbax checkpoints of the TrainState plus the run's history, one per epoch.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves no half-written step behind. A step that is damaged later (truncated file,
bad disk) is skipped with a warning in favour of the newest step that restores; nothing is deleted.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxae.train import TrainState


class NoUsableCheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be restored."""


class Checkpointer:
  """Saves after every epoch (step = epoch number, 1-based) and restores the newest good one."""

  def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, epoch: int, state: TrainState, history: list[dict[str, Any]]) -> None:
    self._manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_savable(state)),
        history=ocp.args.JsonSave({"history": history})))
    self._manager.wait_until_finished()

  def restore_latest(self, like: TrainState) -> tuple[int, TrainState, list[dict[str, Any]]] | None:
    """Returns (epoch, state, history) of the newest restorable step, or None if there is none.

    Raises:
      NoUsableCheckpointError: steps exist but every one of them fails to restore.
    """
    steps = self.steps()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(like))
    for step in reversed(steps):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
        history = restored["history"]["history"]
        if len(history) != step:
          raise ValueError(f"history has {len(history)} epochs, expected {step}")
        _check_structure(restored["state"], abstract)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("jaxae: checkpoint %s is unreadable (%s: %s); trying an older one.",
                        self.directory / str(step), type(e).__name__, str(e).splitlines()[0][:200])
        continue
      state = like.replace(step=restored["state"]["step"], params=restored["state"]["params"],
                           opt_state=restored["state"]["opt_state"])
      return step, state, history
    if steps:
      raise NoUsableCheckpointError(
          f"None of the checkpoints {steps} in {self.directory} can be restored.")
    return None

  def close(self) -> None:
    self._manager.close()


def _savable(state: TrainState) -> dict[str, Any]:
  # A fresh TrainState's step is a Python int; orbax wants arrays.
  return {"step": jnp.asarray(state.step, jnp.int32), "params": state.params,
          "opt_state": state.opt_state}


def _check_structure(restored, abstract) -> None:
  restored_shapes = jax.tree.map(lambda x: (x.shape, x.dtype), restored)
  expected_shapes = jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
  if jax.tree.structure(restored_shapes) != jax.tree.structure(expected_shapes) or \
      jax.tree.leaves(restored_shapes) != jax.tree.leaves(expected_shapes):
    raise ValueError("restored arrays do not match the model's shapes")

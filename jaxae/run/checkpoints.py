"""Orbax checkpoints of the TrainState plus the run's history, one per epoch, checksummed.

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
mid-save leaves no half-written step behind (and the next Checkpointer removes the leftovers).
Beside the state, each step stores a SHA-256 of the state's bytes, the state's structure (every
array's path, shape and dtype), the run's history, and a SHA-256 of all that metadata, so
restoring tells apart:
  - a damaged step (unreadable, or its bytes or metadata no longer match their checksums): moved
    aside to workdir/damaged_checkpoints/ once an older step restores, with a one-line warning;
  - an incompatible step (written by a model of other parameters): an error; nothing is moved.
A state whose every array has a leading axis of 1 (a run's one replica, jaxae/seeds.py) also
restores from a step written without that axis (by a single-seed run before runs were stacked).
In a multi-process run process 0 decides which step to resume from and every process follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import signal
import threading
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxae import parallel
from jaxae.run.workdir import move_aside
from jaxae.steps import TrainState


class NoUsableCheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be restored."""


class IncompatibleCheckpointError(RuntimeError):
  """A checkpoint holds a state of another structure (e.g. code that renamed parameters)."""


class InconsistentCheckpointError(RuntimeError):
  """Processes of one run read a step differently (files not shared, or a transient error)."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (full disk, permissions) or orbax refused to write it."""


@dataclasses.dataclass(frozen=True)
class Restored:
  epoch: int
  state: TrainState
  history: list[dict[str, Any]]
  provenance: dict[str, Any] | None  # What the step was written with; None in older checkpoints.
  damaged: list[str]  # One line per damaged newer step that was moved aside.


_OK, _DAMAGED, _INCOMPATIBLE = 0, 1, 2


class Checkpointer:
  """Saves after every epoch (step = epoch number, 1-based) and restores the newest good one."""

  def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    # orbax removes unfinished saves' folders in a thread it joins only at the first save: a
    # process that ended before one (a refused resume, standard output gone) left that thread to
    # interpreter shutdown, which printed a traceback after the script's one-line error.
    pending = getattr(self._manager, "_cleanup_tmp_directory_future", None)
    if pending is not None:
      pending.result()
      self._manager._cleanup_tmp_directory_future = None  # pylint: disable=protected-access

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, epoch: int, state: TrainState, history: list[dict[str, Any]],
           provenance: dict[str, Any] | None = None) -> None:
    """Writes step `epoch` and waits for it.

    Raises:
      CheckpointSaveError: it could not be written; the earlier steps are untouched.
    """
    savable = _savable(state)
    checksum, structure = fingerprint(savable)
    meta = {"history": history, "state_sha256": checksum, "structure": structure,
            "provenance": provenance}
    meta["meta_sha256"] = _meta_checksum(meta)
    try:
      with _deferred_interrupt(), _quiet_orbax():
        saved = self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(savable), history=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(f"could not write the checkpoint of epoch {epoch} in "
                                f"{self.directory} ({_first_line(e)})") from e
    if not saved:
      raise CheckpointSaveError(f"orbax refused to write the checkpoint of epoch {epoch} in "
                                f"{self.directory} (it holds steps {self.steps()})")

  def restore_latest(self, like: TrainState) -> Restored | None:
    """The newest step that restores and matches its checksum, or None if there is no step.

    Damaged newer steps are moved aside (kept) once an older one restores.

    Raises:
      NoUsableCheckpointError: steps exist but every one of them is damaged (nothing is moved).
      IncompatibleCheckpointError: the newest readable step holds another model's state.
      InconsistentCheckpointError: another process could not read what process 0 restored.
    """
    steps = _from_primary(self.steps())
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(like))
    layouts = [(abstract, fingerprint(abstract, with_checksum=False)[1])]
    if all(x.ndim and x.shape[0] == 1 for x in jax.tree.leaves(abstract)):
      older = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=x.sharding), abstract)
      layouts.append((older, fingerprint(older, with_checksum=False)[1]))
    damaged: list[tuple[int, str]] = []
    for step in reversed(steps):
      status, result = self._try_step(step, layouts)
      checksum = result[1] if status == _OK else ""
      statuses = _gather_status(status, checksum)
      if statuses[0][0] == _INCOMPATIBLE:
        raise IncompatibleCheckpointError(
            result if parallel.is_primary() else f"checkpoint {step} holds another model's state")
      if statuses[0][0] == _DAMAGED:
        damaged.append((step, result if isinstance(result, str) else "damaged in process 0"))
        continue
      disagree = [i for i, s in enumerate(statuses) if s != statuses[0]]
      if disagree:
        raise InconsistentCheckpointError(
            f"checkpoint {self.directory / str(step)} restored in process 0 but not identically "
            f"in process(es) {disagree}, so no process resumes (their states would differ). "
            "Every process must read the same files (a shared file system); if they do, run "
            "the same command again.")
      state, _, meta = result
      notes = self._move_aside(damaged, step)
      return Restored(step, like.replace(step=state["step"], params=state["params"],
                                         opt_state=state["opt_state"]),
                      meta["history"], meta.get("provenance"), notes)
    if steps:
      reasons = "; ".join(f"{s}: {r}" for s, r in damaged)
      raise NoUsableCheckpointError(
          f"none of the checkpoints {steps} in {self.directory} can be restored ({reasons}).")
    return None

  def _try_step(self, step: int, layouts):
    """(_OK, (state, checksum, meta)) or (_DAMAGED | _INCOMPATIBLE, one-line reason).

    `layouts`: [(abstract state, its structure)], the state's own first; the state is returned in
    the first's shapes."""
    (abstract, expected_structure), *older = layouts
    where = self.directory / str(step)
    try:
      with _quiet_orbax():
        meta = self._manager.restore(step, args=ocp.args.Composite(
            history=ocp.args.JsonRestore()))["history"]
      if not isinstance(meta, dict) or len(meta.get("history", ())) != step:
        raise ValueError(f"its history does not hold {step} epochs")
    except Exception as e:  # pylint: disable=broad-except
      return _DAMAGED, f"unreadable ({_first_line(e)})"
    # Checked before the structure is compared: a damaged structure is damage, not another model.
    if meta.get("meta_sha256") not in (None, _meta_checksum(meta)):  # None: written before.
      return _DAMAGED, ("its history, structure or provenance does not match the checksum stored "
                        "with it")
    structure = meta.get("structure")
    add_replica_axis = bool(older) and structure == older[0][1]
    if add_replica_axis:
      abstract, expected_structure = older[0]
    elif structure is not None and structure != expected_structure:
      return _INCOMPATIBLE, (
          f"checkpoint {where} holds a state of another structure than this model's "
          f"({_structure_difference(structure, expected_structure)}): it was written by other "
          "code or for another model, and is not damaged. Resume it with the code that wrote "
          "it, or train in another --workdir; --overwrite would delete this run's checkpoints.")
    try:
      with _quiet_orbax():
        state = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
      checksum, restored_structure = fingerprint(state)
    except Exception as e:  # pylint: disable=broad-except
      return _DAMAGED, f"unreadable ({_first_line(e)})"
    if restored_structure != expected_structure:
      return _DAMAGED, "its arrays do not have the model's shapes"
    if meta.get("state_sha256") not in (None, checksum):  # None: written before checksums.
      return _DAMAGED, "its contents do not match the checksum stored with it"
    if add_replica_axis:
      state = jax.tree.map(lambda x: x[None], state)
    return _OK, (state, checksum, meta)

  def _move_aside(self, damaged: list[tuple[int, str]], good_step: int) -> list[str]:
    notes = []
    if parallel.is_primary():
      for step, reason in damaged:
        target = move_aside(self.directory / str(step), self.directory.parent)
        notes.append(f"checkpoint {self.directory / str(step)} is damaged ({reason}); moved it "
                     f"to {target} and resumed from epoch {good_step}.")
    if damaged:
      parallel.sync("jaxae:damaged_moved")
      self._manager.reload()  # Forget the moved steps, so this epoch's checkpoint is written again.
    return notes

  def close(self) -> None:
    self._manager.close()


def _savable(state: TrainState) -> dict[str, Any]:
  # A fresh TrainState's step is a Python int; orbax wants arrays.
  return {"step": jnp.asarray(state.step, jnp.int32), "params": state.params,
          "opt_state": state.opt_state}


def fingerprint(tree: Any, with_checksum: bool = True) -> tuple[str, list[list[Any]]]:
  """(SHA-256 of every array's path, dtype, shape and bytes; [[path, shape, dtype], ...]).

  Works on replicated arrays spanning other processes (it reads this process's copy), and on
  abstract arrays (ShapeDtypeStruct) when `with_checksum` is False.
  """
  h = hashlib.sha256()
  structure = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = jax.tree_util.keystr(path)
    structure.append([name, list(leaf.shape), str(np.dtype(leaf.dtype))])
    if with_checksum:
      data = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
      data = np.ascontiguousarray(np.asarray(data))
      h.update(f"{name}:{data.dtype}:{data.shape};".encode())
      h.update(data.tobytes())
  return (h.hexdigest() if with_checksum else ""), structure


def _meta_checksum(meta: dict[str, Any]) -> str:
  """SHA-256 of everything a step's metadata holds beside this checksum (canonical JSON)."""
  content = {k: v for k, v in meta.items() if k != "meta_sha256"}
  return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"),
                                   allow_nan=True).encode()).hexdigest()


def _structure_difference(saved: list, expected: list) -> str:
  saved_d = {p: (s, d) for p, s, d in saved}
  expected_d = {p: (s, d) for p, s, d in expected}
  parts = []
  if missing := sorted(set(expected_d) - set(saved_d)):
    parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
  if extra := sorted(set(saved_d) - set(expected_d)):
    parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
  # The model's own parameters first: they say more to a user than their optimizer moments.
  if changed := sorted((p for p in set(saved_d) & set(expected_d) if saved_d[p] != expected_d[p]),
                       key=lambda p: (not p.startswith("['params']"), p)):
    p = changed[0]
    parts.append(f"{p} is {saved_d[p][0]} {saved_d[p][1]}, the model's {expected_d[p][0]} "
                 f"{expected_d[p][1]}" + (f" (+{len(changed) - 1} more)" if len(changed) > 1
                                          else ""))
  return "; ".join(parts) or "different order"


def _first_line(e: BaseException) -> str:
  """What went wrong, in one line: the operating system's error where there is one (orbax wraps
  a full disk in long messages of its own, where "No space left on device" came last)."""
  seen, cause = set(), e
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, OSError) and cause.errno:
      return f"{type(cause).__name__}: {os.strerror(cause.errno)}" + (
          f": {cause.filename}" if cause.filename else "")
    cause = cause.__cause__ or cause.__context__
  text = str(e).strip()
  if found := re.search(r"\[Errno \d+\][^\n]*", text):
    return f"{type(e).__name__}: {found.group(0)[:300]}"
  lines = text.splitlines()
  return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
  """A Ctrl-C during a checkpoint write takes effect once the write is complete.

  A KeyboardInterrupt raised inside orbax's save can be lost there (a test's Ctrl-C, sent as a
  step appeared, left the run training on), and would leave the step half done.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
  if previous is None:  # Installed outside Python: the closest Python can restore is the default.
    previous = signal.SIG_DFL
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    if received:
      _redeliver_interrupt(previous)


def _redeliver_interrupt(handler) -> None:
  """What a Ctrl-C deferred during a write does once it is complete: what `handler`, the one in
  force before the write, would have done with it."""
  if callable(handler):
    # A script's handler leaves (scripts.run); Python's default raises KeyboardInterrupt.
    handler(signal.SIGINT, None)
  elif handler == signal.SIG_DFL:
    signal.raise_signal(signal.SIGINT)  # The default action: the process ends, as it would have.
  # signal.SIG_IGN: ignored, as it would have been.


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Keeps orbax's and tensorstore's multi-page tracebacks of a failed read off the terminal:
  the caller reports the failure in one line."""
  loggers = [logging.getLogger(name) for name in ("absl", "orbax", "jax._src.distributed")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def _from_primary(steps: list[int]) -> list[int]:
  """Process 0's list of steps, in every process (they decide together, step by step)."""
  if jax.process_count() == 1:
    return steps
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  padded = np.full(64, -1, np.int32)
  padded[:min(len(steps), 64)] = steps[-64:]
  return [int(s) for s in multihost_utils.broadcast_one_to_all(padded) if s >= 0]


def _gather_status(status: int, checksum: str) -> list[tuple[int, str]]:
  """Every process's (status, checksum) of one step, in process order."""
  if jax.process_count() == 1:
    return [(status, checksum)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  words = np.frombuffer(bytes.fromhex(checksum or "0" * 64), np.uint32).astype(np.int64)
  mine = np.concatenate([[status], words[:4]]).astype(np.int32)  # 128 bits of the checksum.
  every = np.asarray(multihost_utils.process_allgather(mine))
  return [(int(row[0]), row[1:].tobytes().hex()) for row in every]

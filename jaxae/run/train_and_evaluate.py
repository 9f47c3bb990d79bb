"""A whole training run in a workdir: resume, epochs, checkpoints, metrics.json and figures.

    metrics = train_and_evaluate(config, splits["train"], splits["test"], "runs/corrected",
                                 tensorboard_every=100)

What a run computes is its Config; how it is carried out (limits, checkpoints kept, logging,
TensorBoard, progress, devices) is its RunOptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import pathlib
import time
from typing import Any, Callable, TextIO

import jax
from jax.sharding import Mesh
import numpy as np

from jaxae import parallel, platforms, seeds
from jaxae.config import Config
from jaxae.dataset import MixedSplit
from jaxae.loop import evaluate, steps_per_epoch, train_epoch, train_full_batch_epoch
from jaxae.models import forward_flops
from jaxae.report import figures, summaries
from jaxae.report.progress import EpochProgress
from jaxae.report.tensorboard import TensorBoard
from jaxae.run import workdir as workdir_lib
from jaxae.run.checkpoints import (CheckpointSaveError, Checkpointer, IncompatibleCheckpointError,
                                   InconsistentCheckpointError, NoUsableCheckpointError)
from jaxae.run.errors import RunError
from jaxae.run.provenance import host_change, provenance, version_changes
from jaxae.run.workdir import (CHECKPOINT_DIR, METRICS_FILE, PARAMS_FILE, SETTINGS_FILE,
                               TENSORBOARD_DIR, run_settings, write_json)
from jaxae.steps import TrainState, check_config, count_params
from jaxae.weights import save_params


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a run is carried out; what it computes is its Config.

  Attributes:
    train_limit, test_limit: train and evaluate on the first N pairs of each split (0: all).
      They are the run's settings: a resumed run must use the same.
    overwrite: replace another run (or unusable checkpoints) found in the workdir.
    keep_checkpoints: how many of the newest epochs' checkpoints to keep.
    eval_batch_size: the evaluation batch (None: the platform's, jaxae/platforms.py).
    tensorboard_every: also write TensorBoard event files into workdir/tensorboard, the training
      loss every N steps among them (jaxae/report/tensorboard.py). None or 0: none.
    progress: a stream (e.g. sys.stdout) that shows each epoch's progress while it runs
      (jaxae/report/progress.py): in place on a terminal, a plain line at most every 30 s
      elsewhere.
    log: where the console lines go. warn: where the one-line warnings go (damaged checkpoints
      moved aside, other package versions); None: `log`.
    mesh: the devices to train on, data-parallel (None: every device of every process).
    lock: hold the workdir (workdir.hold) for the whole run; False when the caller holds it.
  """

  train_limit: int = 0
  test_limit: int = 0
  overwrite: bool = False
  keep_checkpoints: int = 3
  eval_batch_size: int | None = None
  tensorboard_every: int | None = None
  progress: TextIO | None = None
  log: Callable[[str], None] = print
  warn: Callable[[str], None] | None = None
  mesh: Mesh | None = None
  lock: bool = True


def train_and_evaluate(config: Config, train: MixedSplit, test: MixedSplit,
                       workdir: str | os.PathLike, options: RunOptions | None = None,
                       **option_fields: Any) -> dict[str, Any]:
  """Trains (resuming from the newest good checkpoint), evaluates, writes the run's files.

  `options` (default RunOptions()), with any of its fields given as keywords instead
  (`train_and_evaluate(config, train, test, workdir, log=print, tensorboard_every=100)`).
  Data-parallel over the options' mesh. In a multi-process run every process calls this with the
  same arguments; process 0 alone logs and writes files, and all of them take part in the
  checkpoints. A refused run writes nothing. `config.conv_impl="auto"`, the microbatch and the
  full-batch chunks are the platform's (jaxae/platforms.py); the run logs them.

  Returns the contents of metrics.json.

  Raises:
    RunError: unusable settings, workdir or checkpoints, a failed write (exit code 2), or a
      diverging run (exit code 1).
  """
  options = dataclasses.replace(options or RunOptions(), **option_fields)
  try:
    check_config(config)
  except ValueError as e:
    raise RunError(f"invalid config: {e}") from None
  for name, limit, split in (("train", options.train_limit, train),
                             ("test", options.test_limit, test)):
    if (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0
        or limit > len(split)):
      raise RunError(f"{name}_limit={limit!r} must be 0 (all) or a count of at most the "
                     f"{name} split's {len(split):,} pairs.")
  # The limits are the run's settings (a resumed run must use the same): applied here, so that
  # they are never recorded without being used. Taking the first N again is a no-op.
  train, test = train.take(options.train_limit), test.take(options.test_limit)
  workdir = pathlib.Path(workdir)
  options = dataclasses.replace(options, warn=options.warn or options.log,
                                mesh=options.mesh or parallel.data_mesh())
  with workdir_lib.hold(workdir) if options.lock else contextlib.nullcontext(), \
      contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, train, test, workdir, options, cleanup)


def _train_and_evaluate(config: Config, train: MixedSplit, test: MixedSplit,
                        workdir: pathlib.Path, options: RunOptions,
                        cleanup: contextlib.ExitStack) -> dict[str, Any]:
  primary = parallel.is_primary()
  log = options.log if primary else (lambda _: None)
  warn = options.warn if primary else (lambda _: None)
  mesh = options.mesh
  settings = run_settings(config, options.train_limit, options.test_limit)
  choice = platforms.choices(config, platforms.platform_of(mesh))
  eval_batch_size = options.eval_batch_size or choice.eval_batch_size
  user_config, config = config, config.replace(conv_impl=choice.conv_impl)
  parallel.sync("jaxae:workdir_held")  # Every process reads the workdir before anyone clears it.
  replace = workdir_lib.holds_other_run(workdir, settings, options.overwrite)  # Or raises.
  _clear(workdir, primary and replace)

  # The state of every run is stacked, of its num_seeds replicas (one seed: of one; seeds.py).
  replicas = config.num_seeds
  epoch_steps = steps_per_epoch(len(train), config.batch_size, config.full_batch)
  if config.lr_schedule != "constant" and config.warmup_steps >= config.epochs * epoch_steps:
    raise RunError(f"--config.warmup_steps={config.warmup_steps} is not smaller than the run's "
                   f"{config.epochs * epoch_steps:,} optimizer steps ({config.epochs} "
                   f"epoch{'s' if config.epochs > 1 else ''} of {epoch_steps:,}): the schedule "
                   "would never decay; lower it.")
  state = parallel.replicate(seeds.create_train_states(config, steps_per_epoch=epoch_steps), mesh)
  task = state.task
  train_examples, test_examples = parallel.replicate((task.examples(train), task.examples(test)),
                                                     mesh)
  checkpoint_dir = workdir / CHECKPOINT_DIR
  now = provenance()
  checkpointer, restored = _restore(state, config, workdir, options, now, log, warn, primary)
  state, history = (restored.state, restored.history) if restored else (state, [])
  if primary:
    _write(lambda: write_json(workdir / SETTINGS_FILE, settings), workdir / SETTINGS_FILE)
  parallel.sync("jaxae:workdir_ready")
  board = None
  if options.tensorboard_every:
    # Every epoch, the task's metrics and pictures on the first test pairs. Every process
    # computes them (a program over the whole mesh); process 0 writes.
    watched = test.take(min(TENSORBOARD_METRICS_PAIRS, len(test)))
    watched_examples = parallel.replicate(task.examples(watched), mesh)
    if primary:
      board = cleanup.enter_context(contextlib.closing(TensorBoard(
          workdir / TENSORBOARD_DIR, options.tensorboard_every,
          seeds=seeds.seeds_of(config),
          # Steps after the restored one are trained again: earlier events of theirs are hidden.
          purge_step=int(np.max(state.step)) + 1 if restored is not None else None)))
  size = _announce(config, state, choice, train, test, mesh, replicas, log)

  steps_done = int(np.max(state.step))  # Counted on the host: each epoch takes the state.
  first_epoch = len(history) + 1
  for epoch in range(first_epoch, config.epochs + 1):
    start = time.perf_counter()
    later = ((config.epochs - epoch) * float(np.median([h["seconds"] for h in history[-5:]]))
             if history else None)
    with (EpochProgress(options.progress, epoch=epoch, epochs=config.epochs, later_s=later,
                        images=len(train) * replicas, compiles=epoch == first_epoch,
                        replicas=replicas)
          if options.progress and primary else contextlib.nullcontext()) as bar:
      if config.full_batch:
        result = train_full_batch_epoch(state, train_examples, mesh=mesh,
                                        chunk_size=choice.full_batch_chunk, replicas=replicas)
      else:
        result = train_epoch(state, train_examples, seed=config.seed, epoch=epoch,
                             batch_size=config.batch_size, mesh=mesh,
                             microbatch_per_device=choice.microbatch_per_device,
                             replicas=replicas,
                             progress=_progress_listener(options.progress, bar))
    if bad := seeds.first_non_finite(result.step_losses):
      step, k = bad
      value = result.step_losses[k, step]
      last = f"epoch {len(history)}" if history else "none (no epoch completed)"
      raise RunError(
          "Training diverged: "
          + (f"replica {k} (seed {config.seed + k}): " if replicas > 1 else "")
          + f"the loss became {value} at epoch {epoch}, step {step + 1} of "
          f"{result.step_losses.shape[-1]}. The last good checkpoint ({last}) is kept in "
          f"{checkpoint_dir}; lower --config.learning_rate and run again.", exit_code=1)
    state = result.state
    first_step, steps_done = steps_done, steps_done + result.step_losses.shape[-1]
    test_loss = evaluate(state, test_examples, batch_size=eval_batch_size,
                         with_predictions=False, mesh=mesh, replicas=replicas)["loss"]
    seconds = time.perf_counter() - start
    history.append({"epoch": epoch, "train_loss": _recorded(result.loss),
                    "test_loss": _recorded(test_loss), "seconds": seconds})
    try:
      checkpointer.save(epoch, state, history, provenance=now)
    except CheckpointSaveError as e:
      raise RunError(f"{e}. The checkpoints of earlier epochs are intact: fix that (free disk "
                     "space) and run the same command again to resume.") from None
    if options.tensorboard_every:
      watched_metrics, previews = _watch(state, task, watched, watched_examples, eval_batch_size,
                                         mesh, replicas)
      if board is not None:
        board.epoch(first_step=first_step, step_losses=result.step_losses,
                    train_loss=result.loss, test_loss=test_loss, seconds=seconds,
                    previews=previews, subset_metrics=watched_metrics)
    remaining = (config.epochs - epoch) * float(np.median([h["seconds"] for h in history[-5:]]))
    log(summaries.epoch_line(epoch, config.epochs, history[-1]["train_loss"],
                             history[-1]["test_loss"], seconds, len(train), remaining, replicas))
  checkpointer.close()

  finals, predictions = replica_final_metrics(state, test, eval_batch_size, replicas, mesh=mesh)
  if history:
    for k, final in enumerate(finals):
      final["train_loss"] = float(np.reshape(history[-1]["train_loss"], -1)[k])
  metrics = {"config": user_config.to_dict(), "platform_choices": dataclasses.asdict(choice),
             "train_limit": options.train_limit, "test_limit": options.test_limit,
             "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
             "num_devices": parallel.mesh_size(mesh), "num_processes": jax.process_count(),
             "optimizer_steps": int(np.max(state.step)), **size, "provenance": now,
             "history": history}
  if replicas > 1:
    # "final": each number's spread across the replicas; each replica's own run under "replicas".
    metrics.update(seeds=seeds.seeds_of(config), final=seeds.spread_of(finals), replicas=[
        {"seed": seed, "history": seeds.replica_history(history, k), "final": finals[k]}
        for k, seed in enumerate(seeds.seeds_of(config))])
  else:
    metrics["final"] = finals[0]
  if board is not None:
    board.final(metrics["optimizer_steps"], finals)
  if not primary:
    return metrics
  _write(lambda: write_json(workdir / METRICS_FILE, metrics), workdir / METRICS_FILE)
  _write(lambda: save_params(workdir / PARAMS_FILE, seeds.saved_params(state.params, replicas),
                             user_config), workdir / PARAMS_FILE)
  if history:
    _write(lambda: figures.loss_curve(
        history, workdir / "loss_curve.png",
        title=("Full batch" if config.full_batch else f"Batch {config.batch_size}")
        + f", {config.optimizer} lr {config.learning_rate:g}"
        + (f", {replicas} seeds (mean, min-max band)" if replicas > 1 else ""),
        ylabel=task.loss_label),
        workdir / "loss_curve.png")
  figure = workdir / figures.RUN_FIGURES[task.name]
  title = f"Seed {config.seed} (the first of {replicas} seeds)" if replicas > 1 else ""
  _write(lambda: figures.draw(task, test, predictions, figure, title=title), figure)
  log(summaries.seeds_summary(finals, seeds.seeds_of(config), task.name))
  return metrics


# TensorBoard's per-epoch SSIM/PSNR are over this many test pairs (0.22 s an epoch on the 2-core
# CPU; all 10,000 would take about ten times that); the final metrics are over all of them.
TENSORBOARD_METRICS_PAIRS = 1000


def _watch(state, task, split: MixedSplit, examples, eval_batch_size: int, mesh: Mesh,
           replicas: int) -> tuple[list[dict[str, Any]], list[list]]:
  """Each replica's task metrics on `split` (the first test pairs), and its `preview_rows`."""
  mine = _per_replica(evaluate(state, examples, batch_size=min(eval_batch_size, len(split)),
                               mesh=mesh, replicas=replicas), replicas)
  return ([{"num_test_images": len(split), **task.final_metrics(split, m)} for m in mine],
          [figures.preview_rows(task, split, m) for m in mine])


def _progress_listener(progress, bar):
  """What hears an epoch's steps: the primary process's bar; the others listen to nothing, but
  listen, so that every process runs the same program (a multi-process run's must match)."""
  if not progress:
    return None
  return bar.steps_done if bar is not None else (lambda done, total, replica=None: None)


def _recorded(values_R: np.ndarray) -> float | list[float]:
  """The replicas' values as the history records them: a list, or one seed's float (the form a
  single run's metrics.json and checkpoints always had)."""
  return values_R.tolist() if len(values_R) > 1 else float(values_R[0])


def _clear(workdir: pathlib.Path, clear: bool) -> None:
  """Process 0 clears the run if `clear`; every process waits for it."""
  if clear:
    workdir_lib.clear_run(workdir)
  parallel.sync("jaxae:run_cleared")


def _write(write: Callable[[], None], path: pathlib.Path) -> None:
  """Runs `write`; a failure (full disk, permissions) becomes one RunError line naming `path`."""
  try:
    write()
  except OSError as e:
    raise RunError(f"could not write {path} ({e.strerror or e}); the checkpoints are intact: "
                   "fix that (free disk space) and run the same command again.") from None


def replica_final_metrics(state: TrainState, test: MixedSplit, eval_batch_size: int,
                          replicas: int, mesh: Mesh | None = None
                          ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  """`final_metrics` of every replica of a stacked state of `replicas` (one seed: 1).

  Returns ([final metrics of each replica], the predictions of the first, for figures).
  """
  ev = evaluate(state, state.task.examples(test), batch_size=eval_batch_size, mesh=mesh,
                replicas=replicas)
  predictions = _per_replica(ev, replicas)
  finals = [{"test_loss": float(ev["loss"][k]), "num_test_images": len(test),
             **state.task.final_metrics(test, mine)} for k, mine in enumerate(predictions)]
  return finals, predictions[0]


def _per_replica(evaluated: dict[str, Any], replicas: int) -> list[dict[str, np.ndarray]]:
  """The task's predictions in `loop.evaluate`'s stacked output, one dict per replica."""
  predictions = {k: v for k, v in evaluated.items() if k not in ("loss", "per_example_loss")}
  return [{k: v[r] for k, v in predictions.items()} for r in range(replicas)]


def _devices(mesh: Mesh) -> str:
  d = parallel.mesh_size(mesh)
  where = f"{d} {mesh.devices.flat[0].platform.upper()} device{'s' if d > 1 else ''}"
  if jax.process_count() > 1:
    where += f" in {jax.process_count()} processes"
  return where


def _restore(state: TrainState, config: Config, workdir: pathlib.Path, options: RunOptions,
             now: dict[str, Any], log, warn, primary: bool):
  """(the run's Checkpointer, its newest good checkpoint or None); each problem a RunError."""
  checkpoint_dir = workdir / CHECKPOINT_DIR
  try:
    checkpointer = Checkpointer(checkpoint_dir, max_to_keep=options.keep_checkpoints)
    restored = checkpointer.restore_latest(state)
  except (IncompatibleCheckpointError, InconsistentCheckpointError) as e:
    raise RunError(str(e)) from None
  except NoUsableCheckpointError as e:
    if not options.overwrite:
      raise RunError(f"{e} Pass --overwrite to start the run over (this deletes them).") from None
    checkpointer.close()
    _clear(workdir, primary)
    return Checkpointer(checkpoint_dir, max_to_keep=options.keep_checkpoints), None
  except OSError as e:
    raise RunError(f"cannot use {checkpoint_dir} ({e.strerror or e}).") from None
  if restored is None:
    return checkpointer, None
  if restored.epoch > config.epochs:
    checkpointer.close()
    raise RunError(f"{workdir} holds {restored.epoch} completed epochs, more than "
                   f"--config.epochs={config.epochs}: pass --config.epochs={restored.epoch} or "
                   "more to continue that run (its checkpoints are kept), or another --workdir.")
  for note in restored.damaged:
    warn(note)
  if changes := version_changes(restored.provenance, now):
    warn(f"resuming under other versions than epoch {restored.epoch} was trained with: "
         f"{changes}.")
  if change := host_change(restored.provenance, now):
    warn(f"resuming on another CPU than epoch {restored.epoch} was trained on ({change}): "
         "epoch times before and after are not comparable.")
  log(f"Resuming {workdir} after epoch {restored.epoch}.")
  return checkpointer, restored


def _announce(config: Config, state: TrainState, choice: platforms.PlatformChoices,
              train: MixedSplit, test: MixedSplit, mesh: Mesh, replicas: int,
              log) -> dict[str, Any]:
  """Logs what the run trains, where and how; returns the model's size for metrics.json."""
  one = state.replace(params=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                          state.params))  # A replica's shapes: nothing computed.
  size = {"num_params": count_params(one.params), "forward_flops_per_image": forward_flops(one)}
  log(f"Task {config.task}" + (f" ({config.separation})" if config.task == "separate" else "")
      + f", model {config.model} {list(config.features)}: {size['num_params']:,} parameters, "
      f"{size['forward_flops_per_image'] / 1e6:,.1f} MFLOPs per image (forward).")
  if replicas > 1:
    how = {"vmap": "as one vmapped program", "loop": "one after another each epoch"}[
        choice.replica_strategy]
    log(f"{replicas} replicas (seeds {config.seed}..{config.seed + replicas - 1}), each with its "
        f"own initialization and shuffle, trained {how}.")
  log(f"On {choice.describe()} (jaxae/platforms.py).")
  log(f"Training on {len(train):,} mean images (test {len(test):,}) on {_devices(mesh)}, "
      + ("full batch (one step per epoch)" if config.full_batch else f"batch {config.batch_size}")
      + f", {config.epochs} epochs.")
  padded = parallel.padded_batch_size(config.batch_size, mesh)
  if not config.full_batch and padded != config.batch_size:
    log(f"Each batch of {config.batch_size} is padded with {padded - config.batch_size} masked "
        f"examples to split evenly over {parallel.mesh_size(mesh)} devices (same loss and "
        "gradient, some idle compute); a multiple of the device count avoids that.")
  return size

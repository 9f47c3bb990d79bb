"""A whole training run in a workdir: resume, epochs, checkpoints, metrics.json and figures.

    metrics = train_and_evaluate(config, splits["train"], splits["test"], "runs/corrected",
                                 tensorboard_every=100)

What a run computes is its Config; how it is carried out (limits, checkpoints kept, logging,
TensorBoard, progress, devices) is its RunOptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import time
from typing import Any, Callable, TextIO

import jax
from jax.sharding import Mesh
import numpy as np

from jaxae import loop, parallel, platforms, seeds, step_reports
from jaxae.config import Config
from jaxae.dataset import MixedSplit, check_limit
from jaxae.models import forward_flops
from jaxae.optimizers import check_schedule
from jaxae.preprocess import value_range
from jaxae.report import figures, summaries
from jaxae.report.progress import EpochProgress
from jaxae.report.tensorboard import TensorBoard
from jaxae.run import choices as choices_lib
from jaxae.run import workdir as workdir_lib
from jaxae.run.checkpoints import (CheckpointSaveError, Checkpointer, IncompatibleCheckpointError,
                                   InconsistentCheckpointError, NoUsableCheckpointError)
from jaxae.run.errors import RunError
from jaxae.run.interruptible import fetch
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
    eval_batch_size: the evaluation batch (None: measured, as the choices below).
    measure_choices: time the speed-only choices on this machine, once (jaxae/run/choices.py);
      False: the platform's defaults (jaxae/platforms.py). A resumed run reuses its own.
      Default: True, unless the environment sets JAXAE_MEASURE_CHOICES=0.
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
  measure_choices: bool = dataclasses.field(default_factory=choices_lib.measure_by_default)
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
  same arguments; process 0 alone logs and writes files. A refused run writes nothing. How the
  model computes on this machine (jaxae/run/choices.py) is logged and recorded.

  Returns the contents of metrics.json.

  Raises:
    RunError: unusable settings, workdir or checkpoints, a failed write (exit code 2), or a
      diverging run (exit code 1).
  """
  options = dataclasses.replace(options or RunOptions(), **option_fields)
  train, test = _checked(config, train, test, options)
  workdir = pathlib.Path(workdir)
  options = dataclasses.replace(options, warn=options.warn or options.log,
                                mesh=options.mesh or parallel.data_mesh())
  with workdir_lib.hold(workdir) if options.lock else contextlib.nullcontext(), \
      contextlib.ExitStack() as cleanup:
    run = _prepare(config, train, test, workdir, options, cleanup)
    for epoch in range(len(run.history) + 1, run.config.epochs + 1):
      start = time.perf_counter()
      run.state, step_losses_RS, train_loss_R = _train(run, epoch)
      test_loss_R = loop.mean_loss(fetch(_evaluate(run, run.test_examples, False))[
          "per_example_loss"])
      run.history.append({"epoch": epoch, "train_loss": _recorded(train_loss_R),
                          "test_loss": _recorded(test_loss_R),
                          "seconds": time.perf_counter() - start})
      # Events before the checkpoint: a kill between the two trains the epoch again, and its
      # events with it (a resumed run hides the first copy), where the other order loses them.
      _write_events(run, step_losses_RS)
      _save(run, epoch)
      _log_epoch(run)
    return _finish(run)


@dataclasses.dataclass
class _Run:
  """A run in progress: what its epochs read, and the state and history they update."""

  config: Config  # The run's, with this platform's formulation (choice.conv_impl).
  user_config: Config  # As given, recorded in metrics.json.
  options: RunOptions
  workdir: pathlib.Path
  train: MixedSplit
  test: MixedSplit
  choice: platforms.PlatformChoices
  choice_source: str  # Where the choice comes from ("measured in 9.2 s", ...).
  state: TrainState  # Stacked: config.num_seeds replicas (seeds.py).
  history: list[dict[str, Any]]
  checkpointer: Checkpointer
  train_examples: Any
  test_examples: Any
  size: dict[str, Any]
  provenance: dict[str, Any]
  board: TensorBoard | None = None
  watched: MixedSplit | None = None  # The test pairs TensorBoard shows each epoch.
  watched_examples: Any = None  # Theirs, placed on the mesh.
  first_epoch: int = 1

  @property
  def log(self) -> Callable[[str], None]:
    return self.options.log if parallel.is_primary() else (lambda _: None)

  @property
  def replicas(self) -> int:
    return self.config.num_seeds


def _checked(config: Config, train: MixedSplit, test: MixedSplit,
             options: RunOptions) -> tuple[MixedSplit, MixedSplit]:
  """The config checked and the limits applied, or RunError: a refused run writes nothing."""
  try:
    check_config(config)
  except ValueError as e:
    raise RunError(f"invalid config: {e}") from None
  try:
    check_limit("train", options.train_limit, len(train))
    check_limit("test", options.test_limit, len(test))
  except ValueError as e:
    raise RunError(str(e)) from None
  # The limits are the run's settings (a resumed run must use the same): applied here, so that
  # they are never recorded without being used.
  train, test = train.take(options.train_limit), test.take(options.test_limit)
  if not config.full_batch and config.batch_size > len(train):
    raise RunError(f"--config.batch_size={config.batch_size} is larger than the training set "
                   f"({len(train):,} pairs).")
  try:
    check_schedule(config, loop.steps_per_epoch(len(train), config.batch_size, config.full_batch))
  except ValueError as e:
    raise RunError(f"--config.{e}") from None
  return train, test


def _prepare(config: Config, train: MixedSplit, test: MixedSplit, workdir: pathlib.Path,
             options: RunOptions, cleanup: contextlib.ExitStack) -> _Run:
  """Claims the workdir, builds or restores the state, opens TensorBoard, logs the setup."""
  primary, mesh = parallel.is_primary(), options.mesh
  settings = run_settings(config, options.train_limit, options.test_limit)
  parallel.sync("jaxae:workdir_held")  # Every process reads the workdir before anyone clears it.
  _clear(workdir, primary and workdir_lib.holds_other_run(workdir, settings, options.overwrite))
  choice, source = _choices(config, workdir, options)
  settings[workdir_lib.CHOICES_SETTING] = dataclasses.asdict(choice)
  run_config = config.replace(conv_impl=choice.conv_impl)
  epoch_steps = loop.steps_per_epoch(len(train), config.batch_size, config.full_batch)
  state = parallel.replicate(
      seeds.create_train_states(run_config, steps_per_epoch=epoch_steps), mesh)
  examples = parallel.replicate((state.task.examples(train), state.task.examples(test)), mesh)
  now = provenance()
  checkpointer, restored = _restore(state, run_config, workdir, options, now, primary)
  cleanup.callback(checkpointer.close)  # On every way out, an error's included.
  if primary:
    _write(lambda: write_json(workdir / SETTINGS_FILE, settings), workdir / SETTINGS_FILE)
  parallel.sync("jaxae:workdir_ready")
  run = _Run(run_config, config, options, workdir, train, test, choice, source,
             restored.state if restored else state, restored.history if restored else [],
             checkpointer, *examples, size={}, provenance=now)
  run.first_epoch = len(run.history) + 1
  if options.tensorboard_every:
    run.watched = test.take(min(TENSORBOARD_METRICS_PAIRS, len(test)))
    run.watched_examples = parallel.replicate(state.task.examples(run.watched), mesh)
    if primary:
      # Steps after the restored one are trained again: earlier events of theirs are hidden.
      purge_step = int(np.max(run.state.step)) + 1 if restored is not None else None
      run.board = cleanup.enter_context(_event_files(
          workdir / TENSORBOARD_DIR, options.tensorboard_every, seeds.seeds_of(config), purge_step))
  run.size = _announce(run)
  return run


def _choices(config: Config, workdir: pathlib.Path,
             options: RunOptions) -> tuple[platforms.PlatformChoices, str]:
  """The run's speed-only choices: a resumed run's recorded ones, else measured or cached (they
  change the floating-point order, so a run keeps its own)."""
  return choices_lib.run_choices(config, options.mesh, eval_batch_size=options.eval_batch_size,
                                 recorded=workdir_lib.recorded_choices(workdir),
                                 measure=options.measure_choices,
                                 log=options.log if parallel.is_primary() else lambda _: None)


@contextlib.contextmanager
def _event_files(logdir: pathlib.Path, every: int, seed_list: list[int],
                 purge_step: int | None):
  """The run's TensorBoard, opened and closed; a failure is a RunError naming `logdir`."""
  try:
    board = TensorBoard(logdir, every, seeds=seed_list, purge_step=purge_step)
  except OSError as e:
    raise RunError(f"cannot write TensorBoard events into {logdir} ({e.strerror or e}); pass "
                   "--log_every_steps=0 to train without them.") from None
  completed = False
  try:
    yield board
    completed = True
  finally:
    try:
      board.close()
    except OSError as e:
      if completed:  # Otherwise the run's own error is the one to tell.
        raise RunError(f"could not write {logdir} ({e.strerror or e}); the checkpoints are "
                       "intact: fix that (free disk space) and run the same command again.") \
            from None


def _train(run: _Run, epoch: int) -> tuple[TrainState, np.ndarray, np.ndarray]:
  """One epoch of every replica, with its progress shown: (state, step losses [R, S], the
  epoch's mean training loss [R])."""
  config, mesh = run.config, run.options.mesh
  if config.full_batch:
    state, loss_R = seeds.over_replicas(
        loop.full_batch_step, run.state, run.train_examples, strategy=run.choice.replica_strategy,
        chunk_size=run.choice.full_batch_chunk, mesh=mesh)
    loss_R = fetch(loss_R).astype(np.float64)
    _check_finite(run, epoch, loss_R[:, None])
    return state, loss_R[:, None], loss_R
  steps = loop.steps_per_epoch(len(run.train), config.batch_size)
  later = _remaining_s(run.history, config.epochs - epoch)
  bar = (EpochProgress(run.options.progress, epoch=epoch, epochs=config.epochs, later_s=later,
                       images=len(run.train) * run.replicas, compiles=epoch == run.first_epoch,
                       replicas=run.replicas)
         if run.options.progress and parallel.is_primary() else None)
  # Every process reports alike, so that all of them run the same program.
  reports = step_reports.every(step_reports.interval(steps)) if run.options.progress else None
  with bar or contextlib.nullcontext(), \
      reports.to(_listener(bar, steps, run)) if reports else contextlib.nullcontext():
    state, losses_RS = seeds.over_replicas(
        loop.train_epoch, run.state, run.train_examples, epoch, seed=config.seed,
        strategy=run.choice.replica_strategy, batch_size=config.batch_size, mesh=mesh,
        microbatch_per_device=run.choice.microbatch_per_device,
        scan=reports.scan if reports else jax.lax.scan)
    losses_RS = fetch(losses_RS).astype(np.float64)
  _check_finite(run, epoch, losses_RS)
  return state, losses_RS, loop.epoch_loss(losses_RS, len(run.train), config.batch_size)


def _listener(bar: EpochProgress | None, steps: int, run: _Run) -> Callable[[int], None]:
  """What hears an epoch's reported steps: the bar, told which replica runs when they run one
  after another (each replica's count starts again)."""
  if bar is None:
    return lambda done: None
  if run.choice.replica_strategy == "vmap" or run.replicas == 1:
    return lambda done: bar.steps_done(done, steps)
  heard = {"replica": 0, "last": 0}

  def replica_steps(done: int) -> None:
    if done <= heard["last"]:
      heard["replica"] += 1
    heard["last"] = done
    k = heard["replica"]
    bar.steps_done(k * steps + done, run.replicas * steps, replica=k)
  return replica_steps


def _check_finite(run: _Run, epoch: int, step_losses_RS: np.ndarray) -> None:
  """RunError (exit 1) naming the step and replica where the loss stopped being finite."""
  if (bad := seeds.first_non_finite(step_losses_RS)) is None:
    return
  step, k = bad
  last = f"epoch {len(run.history)}" if run.history else "none (no epoch completed)"
  raise RunError(
      "Training diverged: "
      + (f"replica {k} (seed {run.config.seed + k}): " if run.replicas > 1 else "")
      + f"the loss became {step_losses_RS[k, step]} at epoch {epoch}, step {step + 1} of "
      f"{step_losses_RS.shape[-1]}. The last good checkpoint ({last}) is kept in "
      f"{run.workdir / CHECKPOINT_DIR}; {_divergence_advice(run.config)}",
      exit_code=1)


def _divergence_advice(config) -> str:
  """What to change: the normalization when it puts pixels far from unit scale (the
  default mean images lie in about [-1.6, 1.8]), else the learning rate."""
  low, high = value_range(config.mnist_normalization, config.cifar_normalization)
  if max(abs(float(low.min())), abs(float(high.max()))) > 10:
    return (f"the normalization puts the mean images in [{float(low.min()):.3g}, "
            f"{float(high.max()):.3g}], far from unit scale: check --config.mnist_normalization "
            "and --config.cifar_normalization (means and stds of [0, 1] pixels) and run again.")
  return "lower --config.learning_rate and run again."


def _evaluate(run: _Run, examples, with_predictions: bool) -> dict[str, Any]:
  return _evaluate_replicas(run.state, examples, run.choice.eval_batch_size, run.options.mesh,
                            with_predictions, run.choice.replica_strategy)


def _evaluate_replicas(state: TrainState, examples, batch_size: int, mesh: Mesh,
                       with_predictions: bool = True, strategy: str | None = None
                       ) -> dict[str, Any]:
  """Every replica's evaluation of `examples` as `strategy` runs replicas (default: the
  platform's; device arrays with a leading replica axis), in batches of at most the examples'
  count."""
  strategy = strategy or platforms.replica_strategy(platforms.platform_of(mesh),
                                                    int(state.step.shape[0]))
  return seeds.over_replicas(
      loop.evaluate, state, examples, strategy=strategy,
      batch_size=min(batch_size, loop.batch_size_of(examples)),
      with_predictions=with_predictions, mesh=mesh)


def _save(run: _Run, epoch: int) -> None:
  try:
    run.checkpointer.save(epoch, run.state, run.history, provenance=run.provenance)
  except CheckpointSaveError as e:
    raise RunError(f"{e}. The checkpoints of earlier epochs are intact: fix that (free disk "
                   "space) and run the same command again to resume.") from None


def _write_events(run: _Run, step_losses_RS: np.ndarray) -> None:
  """With TensorBoard on, the epoch's events."""
  record = run.history[-1]
  if run.watched is not None:
    # Every process computes them (a program over the whole mesh); process 0 writes.
    mine = _per_replica(fetch(_evaluate(run, run.watched_examples, True)), run.replicas)
    if run.board is not None:
      steps_before = int(np.max(run.state.step)) - step_losses_RS.shape[-1]
      _write(lambda: run.board.epoch(
          first_step=steps_before, step_losses=step_losses_RS,
          train_loss=np.reshape(record["train_loss"], -1),
          test_loss=np.reshape(record["test_loss"], -1), seconds=record["seconds"],
          previews=[figures.preview_rows(run.state.task, run.watched, m) for m in mine],
          subset_metrics=[{"num_test_images": len(run.watched),
                           **run.state.task.final_metrics(run.watched, m)} for m in mine]),
             run.workdir / TENSORBOARD_DIR)


def _log_epoch(run: _Run) -> None:
  record = run.history[-1]
  run.log(summaries.epoch_line(record["epoch"], run.config.epochs, record["train_loss"],
                               record["test_loss"], record["seconds"], len(run.train),
                               _remaining_s(run.history, run.config.epochs - record["epoch"]),
                               run.replicas))


def _remaining_s(history: list[dict[str, Any]], epochs_left: int) -> float | None:
  """The seconds `epochs_left` more epochs take, by the median of the last five; None before
  the first."""
  if not history:
    return None
  return epochs_left * float(np.median([h["seconds"] for h in history[-5:]]))


def _finish(run: _Run) -> dict[str, Any]:
  """The final evaluation of every replica, metrics.json, params.msgpack and the figures."""
  finals, predictions = replica_final_metrics(run.state, run.test, run.choice.eval_batch_size,
                                              run.config.num_seeds, mesh=run.options.mesh,
                                              strategy=run.choice.replica_strategy)
  for k, final in enumerate(finals):
    if run.history:
      final["train_loss"] = float(np.reshape(run.history[-1]["train_loss"], -1)[k])
  metrics = _metrics(run, finals)
  if run.board is not None:
    _write(lambda: run.board.final(metrics["optimizer_steps"], finals),
           run.workdir / TENSORBOARD_DIR)
  if not parallel.is_primary():
    return metrics
  workdir, config = run.workdir, run.config
  _write(lambda: write_json(workdir / METRICS_FILE, metrics), workdir / METRICS_FILE)
  _write(lambda: save_params(workdir / PARAMS_FILE,
                             seeds.saved_params(run.state.params, run.replicas),
                             run.user_config), workdir / PARAMS_FILE)
  if run.history:
    title = (("Full batch" if config.full_batch else f"Batch {config.batch_size}")
             + f", {config.optimizer} lr {config.learning_rate:g}"
             + (f", {run.replicas} seeds (mean, min-max band)" if run.replicas > 1 else ""))
    _write(lambda: figures.loss_curve(run.history, workdir / "loss_curve.png", title=title,
                                      ylabel=run.state.task.loss_label),
           workdir / "loss_curve.png")
  figure = workdir / figures.RUN_FIGURES[config.task]
  title = f"Seed {config.seed} (the first of {run.replicas} seeds)" if run.replicas > 1 else ""
  _write(lambda: figures.draw(run.state.task, run.test, predictions, figure, title=title), figure)
  run.log(summaries.seeds_summary(finals, seeds.seeds_of(config), config.task))
  return metrics


def _metrics(run: _Run, finals: list[dict[str, Any]]) -> dict[str, Any]:
  """metrics.json: the run's settings, where it ran, its history and final numbers."""
  metrics = {"config": run.user_config.to_dict(),
             "platform_choices": dataclasses.asdict(run.choice),
             "train_limit": run.options.train_limit, "test_limit": run.options.test_limit,
             "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
             "num_devices": parallel.mesh_size(run.options.mesh),
             "num_processes": jax.process_count(),
             "optimizer_steps": int(np.max(run.state.step)), **run.size,
             "provenance": run.provenance, "history": run.history}
  if run.replicas == 1:
    return {**metrics, "final": finals[0]}
  # "final": each number's spread across the replicas; each replica's own run under "replicas".
  return {**metrics, "seeds": seeds.seeds_of(run.config), "final": seeds.spread_of(finals),
          "replicas": [{"seed": seed, "history": seeds.replica_history(run.history, k),
                        "final": finals[k]} for k, seed in enumerate(seeds.seeds_of(run.config))]}


# TensorBoard's per-epoch SSIM/PSNR are over this many test pairs, a tenth of the test split's
# cost each epoch; the final metrics are over all of them.
TENSORBOARD_METRICS_PAIRS = 1000


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
                          replicas: int, mesh: Mesh | None = None, strategy: str | None = None
                          ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
  """`final_metrics` of every replica of a stacked state of `replicas` (one seed: 1), run as
  `strategy` says (default: the platform's).

  Returns ([final metrics of each replica], the predictions of the first, for figures).
  """
  mesh = mesh or parallel.data_mesh()
  evaluated = fetch(_evaluate_replicas(
      state, parallel.replicate(state.task.examples(test), mesh), eval_batch_size, mesh,
      strategy=strategy))
  test_loss_R = loop.mean_loss(evaluated["per_example_loss"])
  predictions = _per_replica(evaluated, replicas)
  finals = [{"test_loss": float(test_loss_R[k]), "num_test_images": len(test),
             **state.task.final_metrics(test, mine)} for k, mine in enumerate(predictions)]
  return finals, predictions[0]


def _per_replica(evaluated: dict[str, Any], replicas: int) -> list[dict[str, np.ndarray]]:
  """The task's predictions in an evaluation of stacked replicas, one dict per replica."""
  return [{k: v[r] for k, v in evaluated.items() if k != "per_example_loss"}
          for r in range(replicas)]


def _devices(mesh: Mesh) -> str:
  d = parallel.mesh_size(mesh)
  where = f"{d} {mesh.devices.flat[0].platform.upper()} device{'s' if d > 1 else ''}"
  if jax.process_count() > 1:
    where += f" in {jax.process_count()} processes"
  return where


def _restore(state: TrainState, config: Config, workdir: pathlib.Path, options: RunOptions,
             now: dict[str, Any], primary: bool):
  """(the run's Checkpointer, its newest good checkpoint or None); each problem a RunError."""
  log = options.log if primary else (lambda _: None)
  warn = options.warn if primary else (lambda _: None)
  checkpoint_dir = workdir / CHECKPOINT_DIR
  if checkpoint_dir.exists() and not checkpoint_dir.is_dir():  # Else refused after an epoch.
    raise RunError(f"{checkpoint_dir} is not a directory; a run keeps its checkpoints there: "
                   "move it away.")
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


def _announce(run: _Run) -> dict[str, Any]:
  """Logs what the run trains, where and how; returns the model's size for metrics.json."""
  config, mesh, log = run.config, run.options.mesh, run.log
  one = run.state.replace(params=jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), run.state.params))  # No compute.
  size = {"num_params": count_params(one.params), "forward_flops_per_image": forward_flops(one)}
  log(f"Task {config.task}" + (f" ({config.separation})" if config.task == "separate" else "")
      + f", model {config.model} {list(config.features)}: {size['num_params']:,} parameters, "
      f"{size['forward_flops_per_image'] / 1e6:,.1f} MFLOPs per image (forward).")
  if run.replicas > 1:
    how = {"vmap": "as one vmapped program", "loop": "one after another each epoch"}[
        run.choice.replica_strategy]
    log(f"{run.replicas} replicas (seeds {config.seed}..{config.seed + run.replicas - 1}), each "
        f"with its own initialization and shuffle, trained {how}.")
  log(f"On {run.choice.describe()} ({run.choice_source}; jaxae/run/choices.py).")
  if config.gemm_dtype != "float32":
    log(f"The layers' GEMM operands in {config.gemm_dtype}, summed in float32 (parameters and "
        "activations float32).")
  log(f"Training on {len(run.train):,} mean images (test {len(run.test):,}) on "
      f"{_devices(mesh)}, "
      + ("full batch (one step per epoch)" if config.full_batch else f"batch {config.batch_size}")
      + f", {config.epochs} epochs.")
  padded = parallel.padded_batch_size(config.batch_size, mesh)
  if not config.full_batch and padded != config.batch_size:
    log(f"Each batch of {config.batch_size} is padded with {padded - config.batch_size} masked "
        f"examples to split evenly over {parallel.mesh_size(mesh)} devices (same loss and "
        "gradient, some idle compute); a multiple of the device count avoids that.")
  return size

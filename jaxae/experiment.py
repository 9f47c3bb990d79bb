"""A whole training run in a workdir: resume, epochs, checkpoints, metrics.json and figures."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from jax.sharding import Mesh

from jaxae import parallel, plots
from jaxae.checkpoints import Checkpointer, NoUsableCheckpointError
from jaxae.config import Config
from jaxae.dataset import MixedSplit
from jaxae.loop import EVAL_BATCH_SIZE, evaluate, train_epoch, train_full_batch_epoch
from jaxae.metrics import image_quality
from jaxae.train import TrainState, count_params, create_train_state

SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
# Files a run writes; --overwrite removes exactly these and nothing else.
RUN_OUTPUTS = (SETTINGS_FILE, METRICS_FILE, CHECKPOINT_DIR, "loss_curve.png", "reconstructions.png",
               "comparison.png", "eval.json")


class RunError(Exception):
  """A problem the user can fix; the message says how. `exit_code` is the process's."""

  def __init__(self, message: str, exit_code: int = 2):
    super().__init__(message)
    self.exit_code = exit_code


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes atomically: a reader (or a killed writer) never sees half a file."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a results file should be readable.
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def run_settings(config: Config, train_limit: int, test_limit: int) -> dict[str, Any]:
  """What must match for a workdir's checkpoints to continue this run (epochs may grow)."""
  settings = config.to_dict()
  settings.pop("epochs")
  settings.update(train_limit=train_limit, test_limit=test_limit)
  return json.loads(json.dumps(settings))  # Tuples -> lists, as they come back from disk.


# How the layers are computed, not what: a run may resume under another formulation (all compute
# the same function). "conv_transpose" is the name this setting had in earlier versions.
_FORMULATION_KEYS = ("conv_impl", "conv_transpose")


def check_workdir(workdir: pathlib.Path, settings: dict[str, Any], overwrite: bool) -> None:
  """Refuses a workdir that holds a different run, unless `overwrite` (then clears the run).

  In a multi-process run every process checks, and only process 0 clears.
  """
  path = workdir / SETTINGS_FILE
  if not path.exists():
    return
  try:
    existing = json.loads(path.read_text())
  except (OSError, ValueError):
    existing = None
  if isinstance(existing, dict):
    existing = {k: v for k, v in existing.items() if k not in _FORMULATION_KEYS}
  settings = {k: v for k, v in settings.items() if k not in _FORMULATION_KEYS}
  if existing == settings:
    return
  if not overwrite:
    differing = sorted(k for k in set(settings) | set(existing or {})
                       if (existing or {}).get(k) != settings.get(k)) if existing else ["(unreadable)"]
    raise RunError(f"{workdir} holds a run with different settings ({', '.join(differing)}); "
                   "use another --workdir, or pass --overwrite to replace that run.")
  if parallel.is_primary():
    clear_run(workdir)


def clear_run(workdir: pathlib.Path) -> None:
  for name in RUN_OUTPUTS:
    p = workdir / name
    if p.is_dir():
      shutil.rmtree(p)
    elif p.exists():
      p.unlink()


def _line(epoch: int, epochs: int, train_loss: float, test_loss: float, seconds: float,
          images: int, remaining_s: float) -> str:
  return (f"epoch {epoch:3d}/{epochs}  train_loss {train_loss:.6f}  test_loss {test_loss:.6f}  "
          f"{images / max(seconds, 1e-9):8.0f} images/s  {seconds:6.1f} s  "
          f"ETA {remaining_s / 60:5.1f} min")


def train_and_evaluate(config: Config, train: MixedSplit, test: MixedSplit, workdir: str | os.PathLike,
                       *, train_limit: int = 0, test_limit: int = 0, overwrite: bool = False,
                       keep_checkpoints: int = 3, eval_batch_size: int = EVAL_BATCH_SIZE,
                       log: Callable[[str], None] = print,
                       mesh: Mesh | None = None) -> dict[str, Any]:
  """Trains (resuming from the newest good checkpoint), evaluates, writes the run's files.

  Data-parallel over `mesh` (default: every device of every process). In a multi-process run
  every process calls this with the same arguments; process 0 alone logs and writes files, and
  all of them take part in the checkpoints.

  Returns the contents of metrics.json.

  Raises:
    RunError: unusable workdir or checkpoints (exit code 2), or a diverging run (exit code 1).
  """
  workdir = pathlib.Path(workdir)
  mesh = mesh or parallel.data_mesh()
  primary = parallel.is_primary()
  log = log if primary else (lambda _: None)
  settings = run_settings(config, train_limit, test_limit)
  check_workdir(workdir, settings, overwrite)
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / SETTINGS_FILE, settings)
  parallel.sync("jaxae:workdir_ready")

  state = parallel.replicate(create_train_state(jax.random.key(config.seed), config), mesh)
  train_images, test_images = parallel.replicate((train.images, test.images), mesh)
  checkpointer = Checkpointer(workdir / CHECKPOINT_DIR, max_to_keep=keep_checkpoints)
  try:
    restored = checkpointer.restore_latest(state)
  except NoUsableCheckpointError as e:
    if not overwrite:
      raise RunError(f"{e} Pass --overwrite to start the run over.") from None
    checkpointer.close()
    if primary:
      shutil.rmtree(workdir / CHECKPOINT_DIR)
    parallel.sync("jaxae:checkpoints_cleared")
    checkpointer = Checkpointer(workdir / CHECKPOINT_DIR, max_to_keep=keep_checkpoints)
    restored = None
  history: list[dict[str, Any]] = []
  if restored is not None:
    start_epoch, state, history = restored
    log(f"Resuming {workdir} after epoch {start_epoch}.")
  log(f"Training {count_params(state.params):,} parameters on {len(train):,} mean images "
      f"(test {len(test):,}) on {_devices(mesh)}, "
      + ("full batch (one step per epoch)" if config.full_batch else f"batch {config.batch_size}")
      + f", {config.epochs} epochs.")
  padded = parallel.padded_batch_size(config.batch_size, mesh)
  if not config.full_batch and padded != config.batch_size:
    log(f"Each batch of {config.batch_size} is padded with {padded - config.batch_size} masked "
        f"examples to split evenly over {parallel.mesh_size(mesh)} devices (same loss and "
        "gradient, some idle compute); a multiple of the device count avoids that.")

  for epoch in range(len(history) + 1, config.epochs + 1):
    start = time.perf_counter()
    if config.full_batch:
      result = train_full_batch_epoch(state, train_images, mesh=mesh)
    else:
      result = train_epoch(state, train_images, seed=config.seed, epoch=epoch,
                           batch_size=config.batch_size, mesh=mesh)
    bad = np.flatnonzero(~np.isfinite(result.step_losses))
    if bad.size:
      step = int(bad[0]) + 1
      last = f"epoch {len(history)}" if history else "none (no epoch completed)"
      raise RunError(
          f"Training diverged: the loss became {result.step_losses[bad[0]]} at epoch {epoch}, step "
          f"{step} of {len(result.step_losses)}. The last good checkpoint ({last}) is kept in "
          f"{workdir / CHECKPOINT_DIR}; lower --learning_rate and run again.", exit_code=1)
    state = result.state
    test_loss = evaluate(state, test_images, batch_size=eval_batch_size,
                         with_reconstructions=False, mesh=mesh)["loss"]
    seconds = time.perf_counter() - start
    history.append({"epoch": epoch, "train_loss": result.loss, "test_loss": test_loss,
                    "seconds": seconds})
    checkpointer.save(epoch, state, history)
    remaining = (config.epochs - epoch) * float(np.median([h["seconds"] for h in history[-5:]]))
    log(_line(epoch, config.epochs, result.loss, test_loss, seconds, len(train), remaining))
  checkpointer.close()

  final = final_metrics(state, test, eval_batch_size, config, mesh=mesh)
  recons = final.pop("_reconstructions")
  if history:
    final["train_loss"] = history[-1]["train_loss"]
  metrics = {"config": config.to_dict(), "train_limit": train_limit, "test_limit": test_limit,
             "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
             "num_devices": parallel.mesh_size(mesh), "num_processes": jax.process_count(),
             "optimizer_steps": int(state.step), "history": history, "final": final}
  if not primary:
    return metrics
  write_json(workdir / METRICS_FILE, metrics)
  if history:
    plots.loss_curve(history, workdir / "loss_curve.png",
                     title=("Full batch" if config.full_batch else f"Batch {config.batch_size}")
                     + f", {config.optimizer} lr {config.learning_rate:g}")
  norms = dict(mnist_normalization=config.mnist_normalization,
               cifar_normalization=config.cifar_normalization)
  plots.reconstructions(test.images, recons, workdir / "reconstructions.png",
                        count=min(8, len(test)), title="Test mean images (top), reconstructions",
                        **norms)
  log(summary(final))
  return metrics


def final_metrics(state: TrainState, test: MixedSplit, eval_batch_size: int,
                  config: Config, mesh: Mesh | None = None) -> dict[str, Any]:
  """Test loss and SSIM/PSNR (both conventions) over the test split.

  The returned dict carries the reconstructions under "_reconstructions" for the caller's figures.
  """
  ev = evaluate(state, test.images, batch_size=eval_batch_size, mesh=mesh)
  quality = image_quality(test.images, ev["reconstructions"],
                          mnist_normalization=config.mnist_normalization,
                          cifar_normalization=config.cifar_normalization)
  return {"test_loss": ev["loss"], "num_test_images": len(test), **quality,
          "_reconstructions": ev["reconstructions"]}


def _devices(mesh: Mesh) -> str:
  d = parallel.mesh_size(mesh)
  where = f"{d} {mesh.devices.flat[0].platform.upper()} device{'s' if d > 1 else ''}"
  if jax.process_count() > 1:
    where += f" in {jax.process_count()} processes"
  return where


def summary(final: dict[str, Any]) -> str:
  def f(name, unit=""):
    return f"{final[f'{name}_mean']:.4f}{unit} ± {final[f'{name}_std']:.4f}"
  lines = [f"Final test loss {final['test_loss']:.6f} over {final['num_test_images']:,} images"]
  if "train_loss" in final:
    lines[0] += f"; train loss {final['train_loss']:.6f}"
  lines.append(f"  standard: SSIM {f('ssim_standard')}  PSNR {f('psnr_standard')} dB")
  lines.append(f"  original: SSIM {f('ssim_original')}  PSNR {f('psnr_original')} dB")
  return "\n".join(lines)

"""A run's workdir: who holds it (a lock), which run it holds (settings.json), what jaxae wrote.

Layout of a workdir:
    .jaxae.lock            held (flock) by the one process that trains or evaluates here
    settings.json          the settings the checkpoints belong to
    params.msgpack         the trained parameters and their config, when the run ends
    tensorboard/           TensorBoard event files (per seed: tensorboard/seed_<s>/)
    checkpoints/<epoch>/   orbax checkpoints (orbax's <epoch>.orbax-checkpoint-tmp* while saving)
    damaged_checkpoints/   checkpoints that failed their checksum, moved aside, never deleted
    metrics.json, eval.json, *.png   results
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import shutil
import socket
import time
from typing import Any, Iterator

from flax import serialization

from jaxae import parallel, weights
from jaxae.config import Config, without_removed_options
from jaxae.files import write_atomically
from jaxae.report import figures
from jaxae.run.errors import RunError

SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"
# The trained parameters with their config (jaxae/weights.py), written at the end of a run.
PARAMS_FILE = "params.msgpack"
CHECKPOINT_DIR = "checkpoints"
# TensorBoard event files (jaxae/report/tensorboard.py): tensorboard/ or tensorboard/seed_<s>/.
TENSORBOARD_DIR = "tensorboard"
_SEED_DIR = re.compile(r"seed_\d+")
DAMAGED_DIR = "damaged_checkpoints"
LOCK_FILE = ".jaxae.lock"
# Files a run writes at the top of its workdir; --overwrite removes these, the step folders jaxae
# wrote in checkpoints/ and damaged_checkpoints/, and nothing else.
RUN_FILES = (SETTINGS_FILE, METRICS_FILE, PARAMS_FILE, "loss_curve.png", "reconstructions.png",
             "comparison.png", "separation.png", "eval.json")
# A step folder of orbax's, finished or being written (orbax's TMP_DIR_SUFFIX); moved-aside damaged
# steps are named <epoch> or <epoch>.<n>.
_STEP_DIR = re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?")
_DAMAGED_STEP_DIR = re.compile(r"\d+(\.\d+)?")


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes atomically: a reader (or a killed writer) never sees half a file."""
  write_atomically(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, purpose: str = "training") -> Iterator[pathlib.Path]:
  """Holds the workdir for one process, for as long as the `with` block runs.

  An exclusive `flock` on workdir/.jaxae.lock, which the OS releases when the process dies (even
  by SIGKILL), so a crashed run never leaves the workdir locked. The file records who holds it.
  A workdir that this call created and that no run started in (no settings.json) is removed
  again on exit, so a refused run leaves nothing behind.

  In a multi-process run only process 0 takes the lock (the others do nothing here).

  Raises:
    RunError: another process holds the workdir (its pid, host and purpose are named).
  """
  workdir = pathlib.Path(workdir)
  if not parallel.is_primary():
    yield workdir
    return
  created = _make_dirs(workdir)
  path = workdir / LOCK_FILE
  try:
    # Not through a symbolic link: the lock's contents would overwrite whatever it points to.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
  except OSError as e:
    if path.is_symlink() or path.is_dir():
      what = "a symbolic link" if path.is_symlink() else "a directory"
      raise RunError(f"{path} is {what}, not jaxae's lock file; move it away.") from None
    raise RunError(f"cannot open {path} ({e.strerror or e}).") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise RunError(f"{workdir} is in use by {_holder(path)}; wait for it to finish, or use "
                     "another --workdir.") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    try:
      yield workdir
    finally:
      if not (workdir / SETTINGS_FILE).exists():
        path.unlink(missing_ok=True)
        for d in reversed(created):  # Only folders this call made, and only if empty.
          with contextlib.suppress(OSError):
            d.rmdir()
  finally:
    os.close(fd)  # Releases the lock.


def _make_dirs(path: pathlib.Path) -> list[pathlib.Path]:
  """mkdir -p, returning the folders it created (outermost first)."""
  missing = []
  while not path.exists():
    if path.is_symlink():
      raise RunError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                     "create its target, or name another --workdir.")
    missing.append(path)
    path = path.parent
  for d in reversed(missing):
    d.mkdir(exist_ok=True)
  return list(reversed(missing))


def _holder(lock_path: pathlib.Path) -> str:
  try:
    info = json.loads(lock_path.read_text())
    return (f"process {info['pid']} on {info['host']} ({info['purpose']} since "
            f"{info['since']})")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


def run_settings(config: Config, train_limit: int, test_limit: int) -> dict[str, Any]:
  """What must match for a workdir's checkpoints to continue this run.

  A run may be continued for more epochs, unless its learning rate follows a schedule over
  the run's epochs: then a resumed run with another count would have decayed by the old one
  and jump back up, so the epochs are part of its settings.
  """
  settings = config.to_dict()
  if config.lr_schedule == "constant":
    settings.pop("epochs")
  settings.update(train_limit=train_limit, test_limit=test_limit)
  return json.loads(json.dumps(settings))  # Tuples -> lists, as they come back from disk.


# How the layers are computed, not what: a run may resume under another formulation (all compute
# the same function). "conv_transpose" is the name this setting had in earlier versions.
_FORMULATION_KEYS = ("conv_impl", "conv_transpose")
# settings.json's record of the run's speed-only choices (jaxae/run/choices.py): what a resumed
# run reuses, not a setting that makes another run.
CHOICES_SETTING = "platform_choices"
# What settings.json holds beside the settings that tell one run from another.
_NOT_COMPARED = (*_FORMULATION_KEYS, CHOICES_SETTING)


# Settings added after the first release; a settings.json without them means their defaults.
_ADDED_SETTINGS = ("task", "separation", "separation_loss", "model", "lr_schedule",
                   "warmup_steps", "num_seeds", "grad_clip_norm", "weight_decay",
                   "muon_learning_rate", "gemm_dtype", "microbatch")


def recorded_choices(workdir: pathlib.Path) -> dict[str, Any] | None:
  """The speed-only choices settings.json records for the run in `workdir`: None if it holds
  no run, {} for a run from before they were recorded (it ran the platform's defaults)."""
  try:
    settings = json.loads((workdir / SETTINGS_FILE).read_text())
  except (OSError, ValueError):
    return None
  recorded = settings.get(CHOICES_SETTING) if isinstance(settings, dict) else None
  return recorded if isinstance(recorded, dict) else {}


def holds_other_run(workdir: pathlib.Path, settings: dict[str, Any], overwrite: bool) -> bool:
  """Whether `workdir` holds another run, which `overwrite` allows replacing (`clear_run`).

  Changes nothing on disk. Checkpoints without a settings.json are another run too: nobody can
  say which settings they belong to.

  Raises:
    RunError: it holds another run and `overwrite` is False (the differing settings are named).
  """
  refuse_foreign_files(workdir)
  path = workdir / SETTINGS_FILE
  if not path.exists():
    checkpoints, results = jaxae_checkpoints(workdir), jaxae_run_files(workdir)
    if not checkpoints and not results:
      return False
    if overwrite:
      return True
    what = (f"{workdir / CHECKPOINT_DIR} holds checkpoints" if checkpoints else
            f"{workdir} holds the results of a run ({', '.join(results)})")
    raise RunError(f"{what} but no {SETTINGS_FILE} of jaxae's, so nobody can say which run they "
                   "belong to; use another --workdir, or pass --overwrite to replace them "
                   "(this deletes them).")
  try:
    existing = json.loads(path.read_text())
  except (OSError, ValueError):
    existing = None
  if isinstance(existing, dict):
    existing = {k: v for k, v in existing.items() if k not in _NOT_COMPARED}
    try:  # Options removed since: their kept value reads as before, another is refused.
      existing = without_removed_options(existing)
    except ValueError as e:
      raise RunError(f"{workdir} holds a run that no longer can be resumed: {e}") from None
    # Runs from before a setting existed ran with its default.
    for key in _ADDED_SETTINGS:
      existing.setdefault(key, getattr(Config(), key))
    if "epochs" in settings:  # Scheduled runs from before the epochs were recorded: unknown.
      existing.setdefault("epochs", settings["epochs"])
  settings = {k: v for k, v in settings.items() if k not in _NOT_COMPARED}
  if existing == settings:
    return False
  if overwrite:
    return True
  differing = (sorted(k for k in set(settings) | set(existing)
                      if existing.get(k) != settings.get(k)) if existing else ["(unreadable)"])
  why = (f"; its learning rate follows a {settings['lr_schedule']} schedule over "
         f"{existing['epochs']} epochs, so it cannot be continued for another count"
         if "epochs" in differing and existing and "lr_schedule" in settings else "")
  raise RunError(f"{workdir} holds a run with different settings ({', '.join(differing)}){why}; "
                 "use another --workdir, or pass --overwrite to replace that run (this deletes "
                 "its checkpoints).")


# What a file must hold to be jaxae's (--overwrite removes only those): JSON objects with these
# keys, a params file of jaxae/weights.py, a PNG that jaxae's figures (or, before they were
# marked, matplotlib's) wrote.
_JSON_KEYS = {SETTINGS_FILE: {"features", "learning_rate", "batch_size", "seed"},
              METRICS_FILE: {"config", "history", "final"},
              "eval.json": {"epoch", "seconds", "device"}}
# A params file's {"format": weights.FORMAT} as msgpack stores it (after the config: keys sorted).
_PARAMS_MARKER = serialization.msgpack_serialize("format") + serialization.msgpack_serialize(
    weights.FORMAT)
# PNG text chunks: the Software of jaxae's figures (figures.PNG_METADATA), or matplotlib's own.
_PNG_MARKERS = tuple(b"tEXtSoftware\x00" + name.encode()
                     for name in (figures.PNG_METADATA["Software"], "Matplotlib"))


def is_jaxae_file(path: pathlib.Path) -> bool:
  """Whether `path`, one of RUN_FILES, holds what jaxae writes there (not only its name)."""
  if path.suffix == ".msgpack":
    return is_params_file(path)
  try:
    if not path.is_file() or path.is_symlink():
      return False
    if path.suffix == ".json":
      content = json.loads(path.read_text())
      return isinstance(content, dict) and _JSON_KEYS[path.name] <= set(content)
    with open(path, "rb") as f:
      head = f.read(4096)
  except (OSError, ValueError):
    return False
  return head.startswith(b"\x89PNG") and any(m in head for m in _PNG_MARKERS)


def is_params_file(path: pathlib.Path) -> bool:
  """Whether `path` is a params file jaxae wrote (weights.save_params), whatever its name."""
  try:
    if not path.is_file() or path.is_symlink():
      return False
    with open(path, "rb") as f:
      return _PARAMS_MARKER in f.read(4096)
  except OSError:
    return False


def jaxae_run_files(workdir: pathlib.Path) -> list[str]:
  """The names of RUN_FILES in `workdir` that jaxae wrote."""
  return [name for name in RUN_FILES if is_jaxae_file(workdir / name)]


def refuse_foreign_files(workdir: pathlib.Path, names=RUN_FILES) -> None:
  """Raises RunError if a file of `names` in `workdir` is not jaxae's: jaxae would write over it.

  Also with --overwrite, which removes only what jaxae wrote.
  """
  if foreign := [n for n in names if (workdir / n).exists() and not is_jaxae_file(workdir / n)]:
    raise RunError(f"{', '.join(foreign)} in {workdir}: not written by jaxae (by their contents), "
                   "and a run would write over them; move them away or use another --workdir.")


def jaxae_checkpoints(workdir: pathlib.Path) -> list[pathlib.Path]:
  """The step folders jaxae (orbax) wrote in workdir/checkpoints, finished or not."""
  directory = workdir / CHECKPOINT_DIR
  if not directory.is_dir():
    return []
  return sorted(p for p in directory.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name))


def clear_run(workdir: pathlib.Path) -> None:
  """Removes what jaxae wrote for a run in `workdir`, and nothing else.

  The run's files (told by their contents: `is_jaxae_file`), its step folders in checkpoints/
  and damaged_checkpoints/, its TensorBoard event files (then those folders if nothing else is
  in them). Files placed there by anyone else stay, also under jaxae's names. The lock stays.
  """
  for name in jaxae_run_files(workdir):
    (workdir / name).unlink()
  for step_dir in jaxae_checkpoints(workdir):
    shutil.rmtree(step_dir)
  damaged = workdir / DAMAGED_DIR
  if damaged.is_dir():
    for p in damaged.iterdir():
      if p.is_dir() and _DAMAGED_STEP_DIR.fullmatch(p.name):
        shutil.rmtree(p)
  board = workdir / TENSORBOARD_DIR
  folders = [board, *(p for p in board.glob("seed_*") if _SEED_DIR.fullmatch(p.name))]
  for folder in folders:
    for p in folder.glob("events.out.tfevents.*"):
      if p.is_file():
        p.unlink()
  for d in (workdir / CHECKPOINT_DIR, damaged, *folders[1:], board):
    with contextlib.suppress(OSError):
      d.rmdir()  # Only if empty.


def move_aside(step_dir: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
  """Moves a damaged step folder to workdir/damaged_checkpoints/ (kept, never deleted)."""
  damaged = workdir / DAMAGED_DIR
  damaged.mkdir(exist_ok=True)
  target, n = damaged / step_dir.name, 0
  while target.exists():
    n += 1
    target = damaged / f"{step_dir.name}.{n}"
  step_dir.rename(target)
  return target

"""A run's workdir: which run it holds (settings.json), and the files jaxae writes there."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

from jaxae import parallel
from jaxae.config import Config

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

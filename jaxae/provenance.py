"""What produced a result: Python and package versions, and jaxae's git commit when there is one."""

from __future__ import annotations

import functools
import importlib.metadata
import pathlib
import platform
import subprocess
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "dm-pix", "numpy")
_REPO = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def provenance() -> dict[str, Any]:
  """{"python": ..., "<package>": version for each of PACKAGES, "git_commit", "git_dirty"}.

  git_commit is None when jaxae is not run from a git checkout (an installed wheel); git_dirty
  says whether tracked files differed from that commit.
  """
  out: dict[str, Any] = {"python": platform.python_version()}
  for package in PACKAGES:
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = None
  out["git_commit"], out["git_dirty"] = _git_state()
  return out


def _git_state() -> tuple[str | None, bool | None]:
  if not (_REPO / ".git").exists():
    return None, None
  try:
    commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    status = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain",
                             "--untracked-files=no"], capture_output=True, text=True, timeout=10,
                            check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None, None
  return commit or None, bool(status.strip())


def version_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
  """'jax 0.4.30 -> 0.10.2, numpy ...' for the versions that differ ('' if none or unknown)."""
  if not old:
    return ""
  keys = ("python",) + PACKAGES
  return ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k))

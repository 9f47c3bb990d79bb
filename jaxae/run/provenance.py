"""What produced a result: Python and package versions, jaxae's git commit when there is one, and
the host's CPU.

The CPU is recorded because time figures depend on it: the machines this project runs on are not
alike (the same run's epochs took more than twice as long on one as on another), so a time means
little without the CPU it was measured on.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import pathlib
import platform
import subprocess
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "dm-pix", "numpy")
_REPO = pathlib.Path(__file__).resolve().parents[2]  # jaxae/run/ -> the checkout


@functools.cache
def provenance() -> dict[str, Any]:
  """{"python": ..., "<package>": version for each of PACKAGES, "git_commit", "git_dirty",
  "host": `host()`}.

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
  out["host"] = host()
  return out


# The vector extensions that decide XLA:CPU's speed here: AVX2/FMA, AVX-512 and its bfloat16
# dot products, and AMX tiles. /proc/cpuinfo's names.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")


@functools.cache
def host() -> dict[str, Any]:
  """{"cpu": model name (with family/model/stepping where known), "cpus": CPUs this process may
  use, "cpu_features": those of CPU_FEATURES it has (None where unknown)}."""
  try:
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    cpuinfo = ""
  cpu, features = parse_cpuinfo(cpuinfo)
  try:
    cpus = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    cpus = os.cpu_count()
  return {"cpu": cpu or platform.processor() or platform.machine() or None, "cpus": cpus,
          "cpu_features": features}


def parse_cpuinfo(text: str) -> tuple[str | None, list[str] | None]:
  """(model name, e.g. "AMD EPYC (family 25, model 1, stepping 1)", the CPU_FEATURES among its
  flags) of the first processor in a Linux /proc/cpuinfo text; (None, None) for anything else."""
  fields: dict[str, str] = {}
  for line in text.splitlines():
    if not line.strip():
      if fields:
        break  # The first processor's block ends here.
      continue
    key, sep, value = line.partition(":")
    if sep:
      fields.setdefault(key.strip(), value.strip())
  name = fields.get("model name")
  if not name:
    return None, None
  ids = [f"{label} {fields[key]}" for key, label in
         (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")) if key in fields]
  if ids:
    name = f"{name} ({', '.join(ids)})"
  flags = fields.get("flags")
  return name, None if flags is None else [f for f in CPU_FEATURES if f in flags.split()]


def host_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
  """'AMD EPYC (...), 2 CPUs, avx2 fma -> Intel Xeon (...), 2 CPUs, avx2 fma avx512f ...' when
  `new`'s host differs from `old`'s ('' if not, or unknown): epoch times on either side of a
  resume are then not comparable."""
  before, after = ((p or {}).get("host") or {} for p in (old, new))
  if not before or not after or before == after:
    return ""
  def describe(h):
    return f"{h.get('cpu')}, {h.get('cpus')} CPUs, {' '.join(h.get('cpu_features') or ['?'])}"
  return f"{describe(before)} -> {describe(after)}"


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

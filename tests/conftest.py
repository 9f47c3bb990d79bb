import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

# Tests run on CPU XLA, with the dataset cache kept out of the user's home.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "tensorflow_datasets"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
  os.environ["JAXAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("jaxae_cache"))
  # The scripts' subprocesses (which inherit this environment) share one persistent compilation
  # cache: each compiles the same small programs, and a repeat run of train.py takes 7 s
  # instead of 22 s. Compiled programs are the same either way; this process has imported JAX
  # already and does not use it.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_compilation_cache"))
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def shared_data_dir() -> pathlib.Path:
  """The real datasets (present on project machines and in CI); tests needing them skip else."""
  if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "cifar10").is_dir():
    pytest.skip(f"real datasets not found in {SHARED_DATA}")
  return SHARED_DATA


def tiny_splits(n_train: int = 40, n_test: int = 12):
  """Small random (train, test) MixedSplits, the same in every process that asks for them."""
  from jaxae import mix  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def split(n):
    mnist = (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), np.zeros(n, np.int64))
    cifar = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.zeros(n, np.int64))
    return mix(mnist, cifar)

  return split(n_train), split(n_test)


def run_script(script: str, *args: str, timeout: int = 600, env: dict | None = None):
  """Runs experiments/<script> as a user would; returns the CompletedProcess (text output)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {}))
  return subprocess.run([sys.executable, str(REPO / "experiments" / script), *args],
                        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)

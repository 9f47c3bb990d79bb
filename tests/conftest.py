import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "tensorflow_datasets"

# Set before any test module imports JAX. Tests run on CPU XLA. One scratch folder per test run
# holds the decoded-dataset cache (kept out of the user's home) and a persistent compilation
# cache, shared by the pytest-xdist workers and the scripts they start: most of the suite's time
# is XLA compiling, and the workers and the scripts compile many of the same programs (a script's
# model initialization and steps: 10 s cold, under 1 s from the cache). A cached program is the
# same executable, so no number changes. The controller imports this file before it starts the
# workers, which inherit its environment; it alone removes the folder at the end.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWNS_SCRATCH = "JAXAE_TEST_SCRATCH" not in os.environ
if _OWNS_SCRATCH:
  os.environ["JAXAE_TEST_SCRATCH"] = tempfile.mkdtemp(prefix="jaxae-tests-")
_SCRATCH = pathlib.Path(os.environ["JAXAE_TEST_SCRATCH"])
os.environ["JAXAE_CACHE_DIR"] = str(_SCRATCH / "datasets")
# Runs take the platform's defaults: what a test computes must not depend on timings
# (tests/test_choices.py measures).
os.environ["JAXAE_MEASURE_CHOICES"] = "0"
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_SCRATCH / "xla")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_collection_modifyitems(items):
  # The slow tests first (each keeps its place among them): pytest-xdist hands out tests in
  # this order, so the run ends on the fast tier's tests (5 s at most) and both workers finish
  # close together, rather than one waiting while the other runs a 20-second test.
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  if _server is not None:
    _server.stdin.close()  # It exits at the end of its input.
    _server.wait(timeout=60)
  if _OWNS_SCRATCH:
    shutil.rmtree(_SCRATCH, ignore_errors=True)
  if "PYTEST_XDIST_WORKER" in os.environ:
    # A worker's results are with the controller by now, and its tests waited for every result
    # they read. What is left of its exit is JAX's exit handler freeing the thousand or so
    # programs the worker compiled, about 3 s for the last worker, which the whole run waits for.
    # Registered last, this handler runs first and ends the process without it.
    atexit.register(_exit_now)


def _exit_now():
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)  # pylint: disable=protected-access


def shared_data_dir() -> pathlib.Path:
  """The real datasets (present on project machines and in CI); tests needing them skip else."""
  if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "cifar10").is_dir():
    pytest.skip(f"real datasets not found in {SHARED_DATA}")
  return SHARED_DATA


def random_images(n: int, seed: int = 0):
  """n uniform [-1, 1] images [n, 32, 32, 3] as a float32 jax array: normalized-looking input."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, 32, 32, 3)), jnp.float32)


def tree_close(a, b, **kw):
  """assert_allclose leaf by leaf."""
  import jax  # pylint: disable=g-import-not-at-top
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def tiny_splits(n_train: int = 40, n_test: int = 12):
  """Small random (train, test) MixedSplits, the same in every process that asks for them."""
  from jaxae import mix  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def split(n):
    mnist = (rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), np.zeros(n, np.int64))
    cifar = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.zeros(n, np.int64))
    return mix(mnist, cifar)

  return split(n_train), split(n_test)


def flip_a_stored_bit(step_dir: pathlib.Path) -> None:
  """Rewrites checkpoint step `step_dir`'s state with one bit of its largest array flipped: the
  step reads without complaint, and only the checksum jaxae stored beside it can tell.

  The files themselves are not edited: orbax compresses the arrays and keeps its index beside
  them, in an order that varies between runs, so a bit flipped in the middle of a file made the
  step unreadable in one run of some 20 instead of wrong.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  rewritten = step_dir.parent / f"{step_dir.name}.rewritten"
  with ocp.StandardCheckpointer() as checkpointer:
    leaves, treedef = jax.tree.flatten(checkpointer.restore(step_dir / "state"))
    largest = max(range(len(leaves)), key=lambda i: np.size(leaves[i]))
    array = np.array(leaves[largest])
    array.reshape(-1).view(np.uint8)[array.nbytes // 2] ^= 0x10
    leaves[largest] = array
    checkpointer.save(rewritten, jax.tree.unflatten(treedef, leaves))
  shutil.rmtree(step_dir / "state")
  rewritten.rename(step_dir / "state")


def random_params(model, x, seed=0):
  """Parameters of `model`'s shapes and dtypes for input `x`, drawn by NumPy: what a test that
  compares formulations or checks dtypes needs, without flax's initialization (run op by op it
  compiles a program per array; compiled, it costs more than such a test's own programs)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.3, 0.3, s.shape), s.dtype), shapes)


# The original model as PyTorch builds it: nn.Sequential(Conv2d, LeakyReLU, ..., ConvTranspose2d),
# with a NumPy forward pass of PyTorch's definitions (NCHW, its weight layouts).
def torch_layers(features=(16, 32, 64)):
  widths = [3, *features]
  convs = [("conv", widths[i], widths[i + 1]) for i in range(len(features))]
  back = widths[::-1]
  return convs + [("convT", back[i], back[i + 1]) for i in range(len(features))]


def numpy_conv_transpose(x_nchw, w_torch, stride, padding):
  """PyTorch ConvTranspose2d by its definition: scatter-add every input pixel times the kernel.

  x [N, C, H, W]; w_torch [C_in, C_out, k, k] (PyTorch's layout). Returns [N, C_out, H', W'].
  """
  n, c, h, w = x_nchw.shape
  _, o, k, _ = w_torch.shape
  full = np.zeros((n, o, (h - 1) * stride + k, (w - 1) * stride + k))
  for i in range(h):
    for j in range(w):
      for ci in range(c):
        full[:, :, i * stride:i * stride + k, j * stride:j * stride + k] += (
            x_nchw[:, ci, i, j][:, None, None, None] * w_torch[ci][None])
  out_h, out_w = (h - 1) * stride + k - 2 * padding, (w - 1) * stride + k - 2 * padding
  return full[:, :, padding:padding + out_h, padding:padding + out_w]


def numpy_conv(x_nchw, w_torch, b, stride, padding):
  """PyTorch Conv2d by its definition. w_torch [C_out, C_in, k, k]."""
  x = np.pad(x_nchw, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  o, _, k, _ = w_torch.shape
  n, _, h, w = x.shape
  oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
  out = np.zeros((n, o, oh, ow))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
      out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w_torch) + b
  return out


def numpy_torch_forward(state_dict, x_NCHW, layers):
  for i, (kind, _, _) in enumerate(layers):
    w, b = state_dict[f"{2 * i}.weight"], state_dict[f"{2 * i}.bias"]
    x_NCHW = (numpy_conv(x_NCHW, w, b, 2, 1) if kind == "conv"
              else numpy_conv_transpose(x_NCHW, w, 2, 1) + b[None, :, None, None])
    if i < len(layers) - 1:
      x_NCHW = np.where(x_NCHW > 0, x_NCHW, 0.01 * x_NCHW)
  return x_NCHW



def _script_env(extra: dict | None = None) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(extra or {}))


_server: subprocess.Popen | None = None  # This process's tests/script_server.py, once started.


def run_script(script: str, *args: str, timeout: int = 600, env: dict | None = None,
               fresh: bool = False):
  """Runs experiments/<script> as a user would; returns the CompletedProcess (text output).

  The run is a child of tests/script_server.py, which has the scripts' imports done (a second
  saved per run), unless `fresh` or `env` changes a setting JAX or XLA read as they start: then
  it is a process of its own.
  """
  env = _script_env(env)
  argv = [sys.executable, str(REPO / "experiments" / script), *args]
  served = None if fresh else _served(argv, env, timeout)
  return served or subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  env=env, cwd=REPO)


def _served(argv: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess | None:
  """`argv` run by this process's script server (started on first use); None if the server
  answers that the run needs a process of its own."""
  global _server
  if _server is None or _server.poll() is not None:
    _server = subprocess.Popen([sys.executable, str(REPO / "tests" / "script_server.py")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=_script_env(), cwd=REPO)
  with tempfile.TemporaryDirectory() as tmp:
    out, err = pathlib.Path(tmp) / "stdout", pathlib.Path(tmp) / "stderr"
    _server.stdin.write(json.dumps({"script": argv[1], "args": argv[2:], "cwd": str(REPO),
                                    "env": env, "stdout": str(out), "stderr": str(err),
                                    "timeout": timeout}) + "\n")
    _server.stdin.flush()
    line = _server.stdout.readline()
    if not line:
      raise RuntimeError(f"tests/script_server.py exited ({_server.wait()}) running {argv}")
    answer = json.loads(line)
    if "timeout" in answer:
      raise subprocess.TimeoutExpired(argv, timeout)
    if "returncode" not in answer:
      return None
    return subprocess.CompletedProcess(argv, answer["returncode"], out.read_text(),
                                       err.read_text())

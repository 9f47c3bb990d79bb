"""Data parallelism: a mesh of 4 CPU devices, and 2 processes joined by jax.distributed (gloo).

Each case runs in subprocesses (tests/parallel_worker.py): the device count is fixed when a process
starts JAX, and a multi-process run needs processes of its own.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxae import loop, parallel, seeds
from jaxae.run.checkpoints import Checkpointer
from jaxae.run.train_and_evaluate import train_and_evaluate
from jaxae.run.workdir import CHECKPOINT_DIR, METRICS_FILE

import parallel_worker  # Beside this file, like conftest.

WORKER = REPO / "tests" / "parallel_worker.py"


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _json_line(stdout: str) -> dict:
  return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_padded_batch_size_is_the_next_multiple_of_the_device_count():
  one = parallel.data_mesh(jax.devices()[:1])
  assert [parallel.padded_batch_size(b, one) for b in (1, 6, 32)] == [1, 6, 32]
  # A mesh may repeat no device, but the arithmetic only reads the device count.
  four = type("FourDevices", (), {"devices": np.array(jax.devices() * 4)[:4]})()
  assert [parallel.padded_batch_size(b, four) for b in (1, 4, 6, 8, 32)] == [4, 4, 8, 8, 32]


def test_padded_batch_columns_are_masked_and_keep_the_batches():
  idx, mask = loop.epoch_batches(loop.epoch_key(0, 1), 20, 6, 8)
  plain_idx, plain_mask = loop.epoch_batches(loop.epoch_key(0, 1), 20, 6)
  assert idx.shape == (4, 8)
  np.testing.assert_array_equal(idx[:, :6], plain_idx)
  np.testing.assert_array_equal(mask[:, :6], plain_mask)
  assert float(mask[:, 6:].sum()) == 0.0


def _four_devices(tmp_path, part):
  """The JSON line of the four-device worker's `part` (tests/parallel_worker.py)."""
  proc = subprocess.run(
      [sys.executable, str(WORKER), "devices", str(tmp_path), part], capture_output=True,
      text=True, timeout=600, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = _json_line(proc.stdout)
  assert out["num_devices"] == 4
  return out


@pytest.mark.slow
def test_four_devices_run_every_variant_like_one(tmp_path):
  out = _four_devices(tmp_path, "variants")
  # The separation task (dicts of examples, the U-Net, its per-source metrics): the same
  # losses and final metrics as on one device.
  assert len(out["separate_four"]) == 2
  np.testing.assert_allclose(out["separate_four"], out["separate_one"], rtol=1e-5)
  # Three replicas on 4 devices: the same histories as on one device.
  assert len(out["seeds_four"]) == 3
  np.testing.assert_allclose(out["seeds_four"], out["seeds_one"], rtol=1e-5)
  # Batch 6 on 4 devices (padded to 8, masked): the same loss at every step as on one device.
  assert len(out["batch6_four"]) == 7  # ceil(40 / 6) steps.
  np.testing.assert_allclose(out["batch6_four"], out["batch6_one"], rtol=1e-5)


@pytest.mark.slow
def test_four_devices_train_like_one_and_split_every_batch(tmp_path):
  out = _four_devices(tmp_path, "runs")
  # Same per-epoch train and test losses, and the same final SSIM, as on one device.
  np.testing.assert_allclose(out["history_four"], out["history_one"], rtol=1e-5)
  np.testing.assert_allclose(out["ssim_four"], out["ssim_one"], rtol=1e-5)
  # 200 steps with collectives in one program (the worker aborts if they deadlock).
  assert len(out["long_epoch_losses"]) == 200 and np.all(np.isfinite(out["long_epoch_losses"]))

  # The compiled epoch gathers only 2 of each batch's 8 images per device, then all-reduces.
  assert out["gathers"] and all(g.startswith("f32[2,") for g in out["gathers"]), out["gathers"]
  assert out["has_all_reduce"]
  assert out["params_spec"] == "P()"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _restore_params(workdir):
  like = seeds.create_train_states(parallel_worker.config())  # A run's state (of one replica).
  checkpointer = Checkpointer(workdir / CHECKPOINT_DIR)
  try:
    restored = checkpointer.restore_latest(like)
  finally:
    checkpointer.close()
  return restored.epoch, restored.state, restored.history


def _two_processes(workdir, *extra):
  coordinator = f"localhost:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, str(WORKER), "process", str(workdir),
                             coordinator, "2", str(i), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
           for i in range(2)]
  outs = []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("the two-process run did not finish in 600 s")
    assert p.returncode == 0, stderr[-3000:]
    outs.append(_json_line(stdout))
  return outs


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
  outs = _two_processes(tmp_path / "two")

  assert sorted(o["process_index"] for o in outs) == [0, 1]
  assert all(o["process_count"] == 2 and o["num_devices"] == 2 and o["local_devices"] == 1
             for o in outs)
  # Only process 0 reports progress (and writes files; process 1 returns before writing).
  by_index = {o["process_index"]: o for o in outs}
  assert any("epoch" in line for line in by_index[0]["logged"])
  assert by_index[1]["logged"] == []

  # The same run in this one process, one device, the same global batch of 8.
  train, test = parallel_worker.splits()
  single = train_and_evaluate(parallel_worker.config(), train, test, tmp_path / "one",
                              log=lambda _: None)
  for o in outs:
    np.testing.assert_allclose(o["history"], parallel_worker.history(single), rtol=1e-5)
  written = json.loads((tmp_path / "two" / METRICS_FILE).read_text())
  assert written["num_processes"] == 2 and written["num_devices"] == 2

  # The checkpoint the two processes wrote together restores here, with the same parameters.
  epoch_two, state_two, history_two = _restore_params(tmp_path / "two")
  epoch_one, state_one, _ = _restore_params(tmp_path / "one")
  assert epoch_two == epoch_one == 2 and state_two.step.tolist() == state_one.step.tolist()
  assert len(history_two) == 2
  for a, b in zip(jax.tree.leaves(state_two.params), jax.tree.leaves(state_one.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


  # Resuming for a third epoch while process 1 alone cannot read the newest checkpoint (a
  # transient error on one host): no process picks its own fallback; both stop, nothing moved.
  before = sorted(p.name for p in (tmp_path / "two" / CHECKPOINT_DIR).iterdir())
  outs = _two_processes(tmp_path / "two", "3", "1")
  assert all("not identically in process(es) [1]" in o["error"] for o in outs), outs
  assert sorted(p.name for p in (tmp_path / "two" / CHECKPOINT_DIR).iterdir()) == before
  assert not (tmp_path / "two" / "damaged_checkpoints").exists()

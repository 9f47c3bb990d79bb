"""Per-platform choices (jaxae/platforms.py): each branch forced by name, on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_splits
from jaxae import Config, check_config, create_train_state, eval_step, parallel, platforms
from jaxae.run.train_and_evaluate import train_and_evaluate


@pytest.mark.parametrize("platform,forward_mode,expected", [
    ("cpu", True, "gemm"), ("cpu", False, "gemm_vjp"),
    ("gpu", True, "gemm"), ("gpu", False, "gemm_vjp"), ("tpu", False, "reference")])
def test_auto_conv_impl_is_the_platforms(platform, forward_mode, expected):
  assert platforms.resolve_conv_impl("auto", platform, forward_mode=forward_mode) == expected
  assert platforms.resolve_conv_impl("gemm", platform, forward_mode=forward_mode) == "gemm"


def test_batch_sizes_and_strategy_per_platform_and_model():
  cpu = platforms.choices(Config(), "cpu")
  assert (cpu.conv_impl, cpu.microbatch_per_device, cpu.full_batch_chunk, cpu.eval_batch_size,
          cpu.replica_strategy) == ("gemm_vjp", 64, 32, 100, "loop")
  unet = platforms.choices(Config(model="unet"), "cpu")
  assert (unet.microbatch_per_device, unet.full_batch_chunk, unet.eval_batch_size) == (8, 8, 8)
  gpu = platforms.choices(Config(), "gpu")
  assert (gpu.conv_impl, gpu.microbatch_per_device) == ("gemm_vjp", None)
  assert gpu.full_batch_chunk > cpu.full_batch_chunk and gpu.eval_batch_size > cpu.eval_batch_size
  # An explicit formulation is kept on every platform.
  assert platforms.choices(Config(conv_impl="reference"), "gpu").conv_impl == "reference"
  assert "gpu: conv gemm_vjp, whole batches" in gpu.describe()
  assert platforms.choices(Config(), "tpu").conv_impl == "reference"


def test_replicas_loop_on_cpu_and_one_replica_runs_the_single_seed_program_everywhere():
  assert platforms.replica_strategy("cpu", 8) == "loop"
  assert platforms.replica_strategy("gpu", 8) == "vmap"
  assert platforms.replica_strategy("gpu", 1) == "loop"
  assert platforms.choices(Config(num_seeds=4), "gpu").replica_strategy == "vmap"
  assert platforms.choices(Config(), "gpu").replica_strategy == "loop"


@pytest.mark.slow
def test_the_library_default_keeps_forward_mode_and_a_bad_conv_impl_is_named():
  """Config() is conv_impl="auto": on CPU the GEMMs with jvp rules, so jax.jvp works."""
  state = create_train_state(jax.random.key(0), Config(features=(4, 8)))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  loss = lambda p: eval_step(state.replace(params=p), images)["loss"]  # gemm_vjp: no jvp.
  _, tangent = jax.jit(lambda p, t: jax.jvp(loss, (p,), (t,)))(
      state.params, jax.tree.map(jnp.ones_like, state.params))
  assert np.isfinite(tangent)
  with pytest.raises(ValueError, match="conv_impl must be one of auto, gemm, gemm_vjp, reference"):
    check_config(Config(conv_impl="cudnn"))


@pytest.mark.slow
@pytest.mark.parametrize("full_batch", [False, True])
def test_a_run_forced_onto_the_tpu_branch_computes_the_cpu_branchs_history(
    tmp_path, monkeypatch, full_batch):
  """The TPU's branch (XLA's convolutions, whole batches, large chunks; the GPU's differs only in
  taking the GEMM layers) run on CPU: the same numbers as the CPU branch, and the run says what
  it chose."""
  train, test = tiny_splits(n_train=100, n_test=12)
  config = Config(epochs=2, batch_size=96, full_batch=full_batch, features=(4, 8))
  cpu = train_and_evaluate(config, train, test, tmp_path / "cpu", log=lambda _: None)
  monkeypatch.setattr(platforms, "platform_of", lambda mesh: "tpu")
  lines = []
  tpu = train_and_evaluate(config, train, test, tmp_path / "tpu", log=lines.append)
  assert any(line.startswith("On tpu: conv reference, whole batches") for line in lines)
  assert tpu["platform_choices"]["conv_impl"] == "reference"
  assert cpu["platform_choices"]["microbatch_per_device"] == 64
  assert tpu["config"] == cpu["config"] and cpu["config"]["conv_impl"] == "auto"
  for a, b in zip(cpu["history"], tpu["history"]):
    np.testing.assert_allclose([a["train_loss"], a["test_loss"]],
                               [b["train_loss"], b["test_loss"]], rtol=1e-4)

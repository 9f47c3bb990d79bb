"""One dtype policy across the conv formulations, the models and the steps (flax.linen.Conv's).

Parameters are created in `param_dtype`; the computation runs in `dtype`, or with `dtype=None` in
the common type of the input and the parameters; gradients come back in each argument's own dtype.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from jaxae import Config, create_train_state, train_step
from jaxae.conv import CONV_IMPLS
from jaxae.models import Autoencoder

IMPLS = sorted(CONV_IMPLS)
# (input dtype, parameter dtype, x64, the dtype the layer computes in), one test each.
MIXED = {
    "f64-input-f32-params": (jnp.float64, jnp.float32, True, jnp.float64),
    "f64": (jnp.float64, jnp.float64, True, jnp.float64),
    "bf16-input-f32-params": (jnp.bfloat16, jnp.float32, False, jnp.float32),
    "f32-input-bf16-params": (jnp.float32, jnp.bfloat16, False, jnp.float32),
    "bf16": (jnp.bfloat16, jnp.bfloat16, False, jnp.bfloat16),
    "f16": (jnp.float16, jnp.float16, False, jnp.float16),
}
# Agreement with the float32 result: the computation's own precision.
TOLERANCE = {jnp.float64: 1e-5, jnp.float32: 1e-5, jnp.bfloat16: 5e-2, jnp.float16: 5e-3}


def _layer_outputs(impl, x, kernel):
  """Forward and both gradients of each of the formulation's two layers."""
  conv, conv_transpose = CONV_IMPLS[impl]
  out = {}
  for name, layer in (("conv", conv), ("conv_transpose", conv_transpose)):
    def loss(x, k, layer=layer):
      return jnp.sum(jnp.sin(layer(x, k, 2, 1).astype(jnp.float32)))
    out[name] = (layer(x, kernel, 2, 1), *jax.grad(loss, (0, 1))(x, kernel))
  return out


# In the slow tier: each case compiles the three formulations' layers and gradients anew.
@pytest.mark.slow
@pytest.mark.parametrize("x_dtype,param_dtype,x64,compute_dtype", list(MIXED.values()),
                         ids=list(MIXED))
def test_every_conv_formulation_takes_mixed_dtypes_alike(x_dtype, param_dtype, x64, compute_dtype):
  # Before the policy: float64 images beside float32 kernels raised in the GEMM ConvTranspose's
  # derivative and in XLA's convolution; bfloat16 beside float32 in both too.
  rng = np.random.default_rng(0)
  x_np, k_np = rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(4, 4, 3, 3)) / 4
  # The float32 reference on the inputs as rounded to their dtypes.
  expected = _layer_outputs("reference", np.asarray(x_np, x_dtype).astype(np.float32),
                            np.asarray(k_np, param_dtype).astype(np.float32))
  tolerance = max(TOLERANCE[d] for d in (x_dtype, param_dtype, compute_dtype))
  with jax.enable_x64(x64):
    x, kernel = jnp.asarray(x_np, x_dtype), jnp.asarray(k_np, param_dtype)
    for impl in IMPLS:
      got = jax.jit(_layer_outputs, static_argnums=0)(impl, x, kernel)
      for name, (y, dx, dk) in got.items():
        where = f"{impl} {name}"
        assert y.dtype == compute_dtype, where
        assert dx.dtype == x_dtype and dk.dtype == param_dtype, where
        for value, want in zip((y, dx, dk), expected[name]):
          np.testing.assert_allclose(np.asarray(value, np.float64), np.asarray(want, np.float64),
                                     rtol=tolerance, atol=tolerance * 4, err_msg=where)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_the_models_dtype_and_param_dtype_are_flax_convs(impl):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  model = Autoencoder(features=(4, 8), conv_impl=impl, dtype=jnp.bfloat16)
  params = random_params(model, x)  # In the dtypes model.init gives them.
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  y = jax.jit(model.apply)(params, x)
  assert y.dtype == jnp.bfloat16
  grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(model.apply(p, x).astype(
      jnp.float32)))))(params)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  # Halved parameters store and compute in bfloat16 with dtype left to the common type.
  half = Autoencoder(features=(4, 8), conv_impl=impl, param_dtype=jnp.bfloat16)
  half_params = random_params(half, x.astype(jnp.bfloat16))
  assert {p.dtype for p in jax.tree.leaves(half_params)} == {jnp.dtype(jnp.bfloat16)}
  assert jax.jit(half.apply)(half_params, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  # The default stays float32 throughout, the same numbers as before the policy.
  default = Autoencoder(features=(4, 8), conv_impl=impl)
  assert jax.jit(default.apply)(params, x).dtype == jnp.float32


@pytest.mark.slow
def test_train_step_takes_a_float64_batch_under_x64_whole_and_in_microbatches():
  # Before: the microbatched step's running loss sum was float32 and the scan refused its
  # float64 update.
  state = create_train_state(jax.random.key(0), Config(features=(4,)))
  batch = np.random.default_rng(2).normal(size=(4, 32, 32, 3))
  step = jax.jit(train_step, static_argnames="microbatch_size")
  with jax.enable_x64(True):
    whole_state, whole = step(state, jnp.asarray(batch, jnp.float64))
    micro_state, micro = step(state, jnp.asarray(batch, jnp.float64), microbatch_size=2)
  assert whole["loss"].dtype == micro["loss"].dtype == jnp.float64
  np.testing.assert_allclose(micro["loss"], whole["loss"], rtol=1e-6)
  for new in (whole_state, micro_state):  # Parameters keep their float32.
    assert {p.dtype for p in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(micro_state.params["enc0"]["kernel"],
                             whole_state.params["enc0"]["kernel"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_gemm_operands_round_only_the_gemms_inputs(impl):
  """Config.gemm_dtype="bfloat16": every formulation rounds its GEMMs' operands to bfloat16 and
  sums in float32, so the forward pass equals XLA's convolution of the rounded operands, and
  results and gradients stay float32 within bfloat16's rounding of float32's."""
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, 8, 8, 4), jnp.float32)
  kernel = jax.random.normal(kk, (4, 4, 4, 6), jnp.float32) * 0.2
  rounded = _jitted_layer_outputs("reference", x.astype(jnp.bfloat16).astype(jnp.float32),
                                  kernel.astype(jnp.bfloat16).astype(jnp.float32), None)
  exact = _jitted_layer_outputs("reference", x, kernel, None)
  ours = _jitted_layer_outputs(impl, x, kernel, jnp.bfloat16)
  for name in ("conv", "conv_transpose"):
    y, *grads = ours[name]
    assert y.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in grads)
    np.testing.assert_allclose(y, rounded[name][0], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(y - exact[name][0]))) > 1e-4  # The operands were rounded.
    for got, want in zip(grads, exact[name][1:]):
      scale = float(jnp.max(jnp.abs(want)))
      np.testing.assert_allclose(got, want, atol=3e-2 * scale)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jitted_layer_outputs(impl, x, kernel, operand_dtype):
  """Forward and both gradients of each of the formulation's two layers, one program (op by op
  the custom derivatives took seconds)."""
  conv, conv_transpose = CONV_IMPLS[impl]
  out = {}
  for name, layer in (("conv", conv), ("conv_transpose", conv_transpose)):
    def loss(x, k, layer=layer):
      return jnp.sum(jnp.sin(layer(x, k, 2, 1, operand_dtype)))
    out[name] = (layer(x, kernel, 2, 1, operand_dtype), *jax.grad(loss, (0, 1))(x, kernel))
  return out


def test_a_bfloat16_gemm_config_trains_float32_parameters_close_to_float32():
  config = Config(features=(4, 8), conv_impl="gemm_vjp")
  images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  states = {d: create_train_state(jax.random.key(0), config.replace(gemm_dtype=d))
            for d in ("float32", "bfloat16")}
  after = {d: jax.jit(train_step)(s, images) for d, s in states.items()}
  (f32, m32), (bf16, m16) = after["float32"], after["bfloat16"]
  assert jax.tree.all(jax.tree.map(lambda p: p.dtype == jnp.float32, bf16.params))
  assert float(m16["loss"]) != float(m32["loss"])  # Another computation...
  np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=2e-2)  # ...as good.
  with pytest.raises(ValueError, match="gemm_dtype"):
    Config(gemm_dtype="float16").validate()

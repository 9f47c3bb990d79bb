"""The models (jaxae/models/): the original architecture, PyTorch's initialization, every layer
as GEMMs, the U-Net, and transformations of the whole model."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from jaxae import Autoencoder, create_train_state
from jaxae.conv import CONV_IMPLS
from jaxae.models import MODELS, UNet




@pytest.mark.slow
def test_gemm_and_reference_models_have_equal_outputs_and_gradients():
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (6, 32, 32, 3)), jnp.float32)
  models = {impl: Autoencoder(conv_impl=impl) for impl in CONV_IMPLS}
  # Compiled, not op by op: the default model's initialization (one cached program) and each
  # formulation's forward pass and gradient, which run op by op would compile some 200 programs.
  params = {"params": create_train_state(jax.random.key(0)).params}

  def loss(model):
    return lambda p: jnp.mean((model.apply(p, x) - x) ** 2)

  ref = jax.jit(jax.grad(loss(models["reference"])))(params)
  reference_outputs = jax.jit(models["reference"].apply)(params, x)
  for impl in ("gemm", "gemm_vjp"):
    np.testing.assert_allclose(jax.jit(models[impl].apply)(params, x), reference_outputs,
                               atol=1e-6)
    fast = jax.jit(jax.grad(loss(models[impl])))(params)
    for path, r in jax.tree_util.tree_leaves_with_path(ref):
      f = dict(jax.tree_util.tree_leaves_with_path(fast))[path]
      np.testing.assert_allclose(f, r, rtol=1e-4, atol=1e-7,
                                 err_msg=f"{impl} {jax.tree_util.keystr(path)}")


@pytest.mark.slow
def test_default_model_is_the_original_architecture():
  model = Autoencoder()
  x = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]  # Shapes: nothing computed.
  latent = jax.eval_shape(lambda p: model.apply({"params": p}, x, method=Autoencoder.encode),
                          params)
  assert latent.shape == (2, 4, 4, 64)
  assert jax.eval_shape(lambda p: model.apply({"params": p}, x), params).shape == (2, 32, 32, 3)
  # PyTorch's parameter count for the same layers: k*k*in*out + out for each.
  widths = [(3, 16), (16, 32), (32, 64), (64, 32), (32, 16), (16, 3)]
  expected = sum(16 * i * o + o for i, o in widths)
  assert sum(p.size for p in jax.tree.leaves(params)) == expected
  kernels = [params[f"enc{i}"]["kernel"].shape for i in range(3)] + [
      params[f"dec{i}"]["kernel"].shape for i in range(3)]
  assert kernels == [(4, 4, i, o) for i, o in widths]


@pytest.mark.slow
def test_initialization_follows_pytorch_bounds():
  # create_train_state's one-program init: bitwise Autoencoder().init's values (test_steps.py).
  params = create_train_state(jax.random.key(0)).params
  # Conv: fan_in = in * k * k. ConvTranspose: PyTorch uses weight.shape[1] = out channels.
  fan_ins = {"enc0": 3 * 16, "enc1": 16 * 16, "enc2": 32 * 16,
             "dec0": 32 * 16, "dec1": 16 * 16, "dec2": 3 * 16}
  for name, fan_in in fan_ins.items():
    bound = 1 / np.sqrt(fan_in)
    for leaf in params[name].values():
      assert float(jnp.abs(leaf).max()) <= bound
      assert float(jnp.abs(leaf).max()) > 0.5 * bound  # Uniform over the range, not tiny.


@pytest.mark.slow
def test_widths_and_activation_are_configurable():
  model = Autoencoder(features=(8, 16), activation="relu")
  x = jnp.ones((1, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), x)  # Shapes: nothing computed.
  encode = lambda p: model.apply(p, x, method=Autoencoder.encode)
  assert jax.eval_shape(encode, params).shape == (1, 8, 8, 16)
  assert jax.eval_shape(model.apply, params, x).shape == (1, 32, 32, 3)
  with pytest.raises(ValueError, match="Unknown activation"):
    jax.eval_shape(Autoencoder(activation="nope").init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="Unknown conv_impl"):
    jax.eval_shape(Autoencoder(conv_impl="nope").init, jax.random.key(0), x)


@pytest.mark.slow
def test_model_supports_jvp_jacfwd_and_hessian_vector_products():
  # The default model's layers at smaller widths and images: the same code paths, less compute.
  x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  models = {impl: Autoencoder(features=(4, 8, 8), conv_impl=impl) for impl in ("gemm", "reference")}
  params = random_params(models["gemm"], x)
  direction = jax.tree.map(jnp.ones_like, params)

  def loss(model):
    return lambda p: jnp.mean((model.apply(p, x) - x) ** 2)

  for transform in (
      lambda f: jax.jvp(f, (params,), (direction,))[1],                     # forward mode
      lambda f: jax.jacfwd(lambda s: f(jax.tree.map(lambda p: p * s, params)))(1.0),
      lambda f: jax.jvp(jax.grad(f), (params,), (direction,))[1],            # Hessian-vector
  ):
    got, ref = (jax.jit(lambda impl=impl: transform(loss(models[impl])))() for impl in
                ("gemm", "reference"))
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      np.testing.assert_allclose(g, r, rtol=2e-3, atol=1e-5)


def _conv_primitives(jaxpr) -> set[str]:
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.add(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found |= _conv_primitives(sub)
  return found


@pytest.mark.slow
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_every_layer_of_every_model_trains_as_gemms(model_name):
  """No lax convolution left in a training gradient: XLA:CPU's own are slow (docs/speed.md)."""
  model = MODELS[model_name](features=(4, 8, 8), out_channels=1, conv_impl="gemm_vjp")
  x = jnp.zeros((2, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), x)  # Tracing needs shapes alone.
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.mean(model.apply(p, x) ** 2)))(params)
  assert _conv_primitives(jaxpr.jaxpr) == set()
  reference = MODELS[model_name](features=(4, 8, 8), out_channels=1, conv_impl="reference")
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.mean(reference.apply(p, x) ** 2)))(params)
  assert "conv_general_dilated" in _conv_primitives(jaxpr.jaxpr)  # The check can fail.


@pytest.mark.slow
def test_unet_shapes_skips_and_formulations():
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  models = {impl: UNet(features=(4, 8, 16), out_channels=1, conv_impl=impl) for impl in CONV_IMPLS}
  params = random_params(models["reference"], x)
  names = set(params["params"])
  assert names == {"stem", "enc0", "down1", "enc1", "down2", "enc2", "up1", "dec1", "up0", "dec0",
                   "head"}
  assert params["params"]["dec0"]["kernel"].shape == (3, 3, 8, 4)  # Skip: 4 up + 4 from enc0.
  assert params["params"]["head"]["kernel"].shape == (1, 1, 4, 1)
  ref = jax.jit(models["reference"].apply)(params, x)
  assert ref.shape == (2, 8, 8, 1)
  loss = lambda model: lambda p: jnp.mean((model.apply(p, x) - 0.5) ** 2)
  for impl in ("gemm", "gemm_vjp"):
    np.testing.assert_allclose(jax.jit(models[impl].apply)(params, x), ref, atol=1e-5)
  # The training formulation's gradient (each layer's, both formulations, is tested above).
  ref_grad = jax.jit(jax.grad(loss(models["reference"])))(params)
  fast_grad = jax.jit(jax.grad(loss(models["gemm_vjp"])))(params)
  for r, f in zip(jax.tree.leaves(ref_grad), jax.tree.leaves(fast_grad)):
    np.testing.assert_allclose(f, r, rtol=1e-3, atol=1e-6)

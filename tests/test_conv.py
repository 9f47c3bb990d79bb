"""The convolution layers (jaxae/conv.py, as models/layers.py uses them): every formulation
computes PyTorch's Conv2d and ConvTranspose2d (a NumPy implementation of their semantics), and the
GEMM formulations have XLA's reference derivatives, forward and reverse."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import numpy_conv, numpy_conv_transpose
from jaxae.conv import CONV_IMPLS, _im2col, _overlap_add  # pylint: disable=protected-access
from jaxae.models import TorchConv, TorchConvTranspose


def apply_nchw(layer, kernel_HWIO, bias, x_nchw):
  """The Flax layer with these weights on an NCHW input, returning NCHW like PyTorch."""
  params = {"params": {"kernel": jnp.asarray(kernel_HWIO, jnp.float32),
                       "bias": jnp.asarray(bias, jnp.float32)}}
  # Compiled: one program per layer, rather than one per operation run eagerly.
  out = jax.jit(layer.apply)(params, jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32))
  return np.asarray(out).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("impl", sorted(CONV_IMPLS))
@pytest.mark.parametrize("n,c,o,h,w", [(2, 3, 5, 4, 4), (1, 4, 2, 5, 3), (3, 2, 3, 1, 1)])
def test_conv_transpose_computes_pytorch_conv_transpose2d(impl, n, c, o, h, w):
  rng = np.random.default_rng(h * 10 + c)
  x = rng.normal(size=(n, c, h, w))
  w_torch = rng.normal(size=(c, o, 4, 4))
  bias = rng.normal(size=(o,))
  expected = numpy_conv_transpose(x, w_torch, 2, 1) + bias[None, :, None, None]
  got = apply_nchw(TorchConvTranspose(o, impl=impl), w_torch.transpose(2, 3, 0, 1), bias, x)
  assert got.shape == (n, o, 2 * h, 2 * w)
  np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("impl", sorted(CONV_IMPLS))
@pytest.mark.parametrize("n,c,o,h,w", [(2, 3, 5, 8, 6), (1, 4, 2, 2, 4), (2, 2, 3, 5, 7)])
def test_conv_computes_pytorch_conv2d(impl, n, c, o, h, w):
  rng = np.random.default_rng(h * 10 + w)
  x = rng.normal(size=(n, c, h, w))
  w_torch = rng.normal(size=(o, c, 4, 4))
  b = rng.normal(size=(o,))
  got = apply_nchw(TorchConv(o, impl=impl), w_torch.transpose(2, 3, 1, 0), b, x)
  np.testing.assert_allclose(got, numpy_conv(x, w_torch, b, 2, 1), atol=1e-4)


@pytest.mark.parametrize("k,stride,padding", [(4, 2, 1), (6, 2, 2), (3, 1, 1), (1, 1, 0)])
def test_im2col_and_overlap_add_move_every_tap_and_add_in_tap_order(k, stride, padding):
  """The GEMM layers' data movement against its definition, one tap at a time, bit for bit:
  a misplaced tap, or taps added in another order (other rounding), fails."""
  rng = np.random.default_rng(k)
  h, w, c = 4, 3, 5
  x = rng.normal(size=(2, stride * h, stride * w, c)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  columns = np.concatenate([xp[:, a:a + stride * h:stride, b:b + stride * w:stride]
                            for a in range(k) for b in range(k)], axis=-1)
  z = rng.normal(size=(2, h, w, k, k, c)).astype(np.float32)
  out = np.zeros((2, stride * (h - 1) + k, stride * (w - 1) + k, c), np.float32)
  for a in range(k):  # Each output pixel receives its taps in (a, b) order.
    for b in range(k):
      out[:, a:a + stride * h:stride, b:b + stride * w:stride] += z[:, :, :, a, b]
  out = out[:, padding:padding + stride * h, padding:padding + stride * w]
  # Compiled, where XLA fuses the slices and additions (op by op would compile every slice).
  im2col = jax.jit(_im2col, static_argnums=(1, 2, 3))
  overlap_add = jax.jit(_overlap_add, static_argnums=(1, 2))
  np.testing.assert_array_equal(im2col(jnp.asarray(x), k, stride, padding), columns)
  np.testing.assert_array_equal(overlap_add(jnp.asarray(z), stride, padding), out)


@pytest.mark.parametrize("layer", ["conv", "conv_transpose"])
@pytest.mark.parametrize("n,h,w,c,o", [(4, 8, 8, 32, 16), (3, 4, 6, 3, 5)])
def test_gemm_and_reference_layers_have_equal_gradients(layer, n, h, w, c, o):
  """The hand-written derivatives of the "gemm" formulation against JAX's derivative of lax's
  convs."""
  rng = np.random.default_rng(n + c)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(4, 4, c, o)) * 0.1, jnp.float32)
  index = 0 if layer == "conv" else 1
  out_hw = (h // 2, w // 2) if layer == "conv" else (2 * h, 2 * w)
  target = jnp.asarray(rng.normal(size=(n, *out_hw, o)), jnp.float32)

  def loss(impl):
    fn = CONV_IMPLS[impl][index]
    return lambda x, k: jnp.mean((jnp.sin(fn(x, k, 2, 1)) - target) ** 2)

  ref = jax.grad(loss("reference"), argnums=(0, 1))(x, kernel)
  for impl in ("gemm", "gemm_vjp"):
    fast = jax.jit(jax.grad(loss(impl), argnums=(0, 1)))(x, kernel)
    for r, f in zip(ref, fast):
      assert f.shape == r.shape
      np.testing.assert_allclose(f, r, rtol=1e-4, atol=1e-6, err_msg=impl)


@pytest.mark.parametrize("layer", ["conv", "conv_transpose"])
def test_gemm_layers_have_forward_mode_derivatives_equal_to_the_reference(layer):
  """jax.jvp through a GEMM layer, in x and in the kernel at once, against lax's convolutions."""
  rng = np.random.default_rng(5)
  index = 0 if layer == "conv" else 1
  x, dx = (jnp.asarray(rng.normal(size=(2, 6, 4, 3)), jnp.float32) for _ in range(2))
  kernel, dk = (jnp.asarray(rng.normal(size=(4, 4, 3, 5)), jnp.float32) for _ in range(2))
  outs = {impl: jax.jit(lambda x, k, dx, dk, fn=CONV_IMPLS[impl][index]: jax.jvp(
      lambda x, k: fn(x, k, 2, 1), (x, k), (dx, dk)))(x, kernel, dx, dk)
          for impl in ("gemm", "reference")}
  for got, ref in zip(outs["gemm"], outs["reference"]):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# The U-Net's shapes: 3x3 stride 1 (padding 1) and 1x1 convolutions, computed as GEMMs too.
STRIDE_ONE = [(3, 1), (1, 0)]


@pytest.mark.parametrize("impl", sorted(CONV_IMPLS))
@pytest.mark.parametrize("k,p", STRIDE_ONE)
def test_stride_one_layers_compute_pytorch_layers(impl, k, p):
  rng = np.random.default_rng(k)
  x = rng.normal(size=(2, 3, 5, 6))
  w_conv, w_convt = rng.normal(size=(4, 3, k, k)), rng.normal(size=(3, 4, k, k))
  b = rng.normal(size=4)
  got = apply_nchw(TorchConv(4, k, 1, p, impl=impl), w_conv.transpose(2, 3, 1, 0), b, x)
  np.testing.assert_allclose(got, numpy_conv(x, w_conv, b, 1, p), atol=1e-4)
  got = apply_nchw(TorchConvTranspose(4, k, 1, p, impl=impl), w_convt.transpose(2, 3, 0, 1), b, x)
  expected = numpy_conv_transpose(x, w_convt, 1, p) + b[None, :, None, None]
  np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["conv", "conv_transpose"])
@pytest.mark.parametrize("k,p", STRIDE_ONE)
def test_stride_one_gemm_layers_have_the_reference_gradients_and_tangents(layer, k, p):
  rng = np.random.default_rng(k + 7)
  index = 0 if layer == "conv" else 1
  x, dx = (jnp.asarray(rng.normal(size=(3, 6, 5, 4)), jnp.float32) for _ in range(2))
  kernel, dk = (jnp.asarray(rng.normal(size=(k, k, 4, 6)) * 0.2, jnp.float32) for _ in range(2))
  target = jnp.asarray(rng.normal(size=(3, 6, 5, 6)), jnp.float32)

  def loss(impl):
    fn = CONV_IMPLS[impl][index]
    return lambda x, w: jnp.mean((jnp.sin(fn(x, w, 1, p)) - target) ** 2)

  ref = jax.jit(jax.grad(loss("reference"), argnums=(0, 1)))(x, kernel)
  for impl in ("gemm", "gemm_vjp"):
    for r, f in zip(ref, jax.jit(jax.grad(loss(impl), argnums=(0, 1)))(x, kernel)):
      np.testing.assert_allclose(f, r, rtol=1e-4, atol=1e-6, err_msg=impl)
  tangents = {impl: jax.jit(lambda x, w, dx, dk, fn=CONV_IMPLS[impl][index]: jax.jvp(
      lambda x, w: fn(x, w, 1, p), (x, w), (dx, dk)))(x, kernel, dx, dk)
              for impl in ("gemm", "reference")}
  for got, want in zip(tangents["gemm"], tangents["reference"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

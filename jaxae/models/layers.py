"""Layers with PyTorch's semantics and initialization, shared by every model of the family.

Dtypes follow `flax.linen.Conv`: parameters are created in `param_dtype` (float32 by default);
the input, kernel and bias are cast to `dtype` for the computation, or with `dtype=None` to their
common type (float32 parameters and a bfloat16 input compute in float32; float64 under x64 in
float64). Every conv formulation then computes in that one dtype; `operand_dtype` (bfloat16)
rounds only the GEMMs' operands, their products summed in it (Config.gemm_dtype).

Kernels are stored HWIO, [kh, kw, in, out]. A PyTorch `Conv2d.weight` [out, in, kh, kw] maps to
`w.transpose(2, 3, 1, 0)`; a PyTorch `ConvTranspose2d.weight` [in, out, kh, kw] maps to
`w.transpose(2, 3, 0, 1)`. With those weights each layer computes what PyTorch's does.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp
import numpy as np

from jaxae.conv import CONV_IMPLS


def torch_uniform_init(fan_in: int):
  """PyTorch's default Conv/ConvTranspose init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  (kaiming_uniform with a=sqrt(5) gives exactly this bound for weights, and biases use it too.)
  """
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class TorchConv(nn.Module):
  """PyTorch Conv2d(k, stride, padding) in NHWC."""

  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1
  impl: str = "gemm"  # A key of jaxae.conv.CONV_IMPLS; all compute the same function.
  dtype: Any = None  # The computation's dtype; None: the common type of input and parameters.
  param_dtype: Any = jnp.float32
  # The GEMMs' operands rounded to this dtype (bfloat16), summed in `dtype`; None: not rounded.
  operand_dtype: Any = None

  @nn.compact
  def __call__(self, x_BHWC):
    c_in = x_BHWC.shape[-1]
    init = torch_uniform_init(c_in * self.kernel_size ** 2)
    kernel = self.param("kernel", init, (self.kernel_size, self.kernel_size, c_in, self.features),
                        self.param_dtype)
    bias = self.param("bias", init, (self.features,), self.param_dtype)
    x_BHWC, kernel, bias = promote_dtype(x_BHWC, kernel, bias, dtype=self.dtype)
    conv, _ = CONV_IMPLS[self.impl]
    return conv(x_BHWC, kernel, self.stride, self.padding, self.operand_dtype) + bias


class TorchConvTranspose(nn.Module):
  """PyTorch ConvTranspose2d(k, stride, padding) in NHWC; kernel [k, k, in, out]."""

  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1
  impl: str = "gemm"  # A key of jaxae.conv.CONV_IMPLS.
  dtype: Any = None
  param_dtype: Any = jnp.float32
  operand_dtype: Any = None

  @nn.compact
  def __call__(self, x_BHWC):
    c_in = x_BHWC.shape[-1]
    # PyTorch computes ConvTranspose fan-in from weight.shape[1], which is the *output* channels.
    init = torch_uniform_init(self.features * self.kernel_size ** 2)
    kernel = self.param("kernel", init, (self.kernel_size, self.kernel_size, c_in, self.features),
                        self.param_dtype)
    bias = self.param("bias", init, (self.features,), self.param_dtype)
    x_BHWC, kernel, bias = promote_dtype(x_BHWC, kernel, bias, dtype=self.dtype)
    _, conv_transpose = CONV_IMPLS[self.impl]
    return conv_transpose(x_BHWC, kernel, self.stride, self.padding,
                          self.operand_dtype) + bias


def make_activation(name: str, negative_slope: float = 0.01) -> Callable[[jax.Array], jax.Array]:
  if name == "leaky_relu":
    return lambda x: jax.nn.leaky_relu(x, negative_slope)
  if name in ("relu", "gelu", "silu", "tanh", "elu"):
    return getattr(jax.nn, name)
  raise ValueError(f"Unknown activation {name!r}; use leaky_relu, relu, gelu, silu, tanh or elu.")


def check_conv_impl(conv_impl: str) -> None:
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {conv_impl!r}; use one of {sorted(CONV_IMPLS)}.")

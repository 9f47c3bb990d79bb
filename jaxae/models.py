"""The convolutional autoencoder, with PyTorch's layer semantics and initialization.

Kernels are stored HWIO, [kh, kw, in, out]. A PyTorch `Conv2d.weight` [out, in, kh, kw] maps to
`w.transpose(2, 3, 1, 0)`; a PyTorch `ConvTranspose2d.weight` [in, out, kh, kw] maps to
`w.transpose(2, 3, 0, 1)`. With those weights each layer computes what PyTorch's does.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import Config
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

  @nn.compact
  def __call__(self, x_BHWC):
    c_in = x_BHWC.shape[-1]
    init = torch_uniform_init(c_in * self.kernel_size ** 2)
    kernel = self.param("kernel", init, (self.kernel_size, self.kernel_size, c_in, self.features))
    bias = self.param("bias", init, (self.features,))
    conv, _ = CONV_IMPLS[self.impl]
    return conv(x_BHWC, kernel, self.stride, self.padding) + bias


class TorchConvTranspose(nn.Module):
  """PyTorch ConvTranspose2d(k, stride, padding) in NHWC; kernel [k, k, in, out]."""

  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1
  impl: str = "gemm"  # A key of jaxae.conv.CONV_IMPLS.

  @nn.compact
  def __call__(self, x_BHWC):
    c_in = x_BHWC.shape[-1]
    # PyTorch computes ConvTranspose fan-in from weight.shape[1], which is the *output* channels.
    init = torch_uniform_init(self.features * self.kernel_size ** 2)
    kernel = self.param("kernel", init, (self.kernel_size, self.kernel_size, c_in, self.features))
    bias = self.param("bias", init, (self.features,))
    _, conv_transpose = CONV_IMPLS[self.impl]
    return conv_transpose(x_BHWC, kernel, self.stride, self.padding) + bias


def make_activation(name: str, negative_slope: float = 0.01) -> Callable[[jax.Array], jax.Array]:
  if name == "leaky_relu":
    return lambda x: jax.nn.leaky_relu(x, negative_slope)
  if name in ("relu", "gelu", "silu", "tanh", "elu"):
    return getattr(jax.nn, name)
  raise ValueError(f"Unknown activation {name!r}; use leaky_relu, relu, gelu, silu, tanh or elu.")


class Autoencoder(nn.Module):
  """Conv 4x4/2 encoder (3 -> features...), mirrored ConvTranspose 4x4/2 decoder, linear output.

  Default: 32x32x3 -> 16x16x16 -> 8x8x32 -> 4x4x64 latent -> back to 32x32x3.
  """

  features: Sequence[int] = (16, 32, 64)
  out_channels: int = 3
  activation: str = "leaky_relu"
  negative_slope: float = 0.01
  conv_impl: str = "gemm"

  def setup(self):
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"Unknown conv_impl {self.conv_impl!r}; use one of {sorted(CONV_IMPLS)}.")
    self.act = make_activation(self.activation, self.negative_slope)
    self.encoder_layers = [TorchConv(f, impl=self.conv_impl, name=f"enc{i}")
                           for i, f in enumerate(self.features)]
    widths = list(self.features[-2::-1]) + [self.out_channels]
    self.decoder_layers = [TorchConvTranspose(f, impl=self.conv_impl, name=f"dec{i}")
                           for i, f in enumerate(widths)]

  def encode(self, x_BHWC):
    for layer in self.encoder_layers:
      x_BHWC = self.act(layer(x_BHWC))
    return x_BHWC

  def decode(self, z_BHWC):
    for i, layer in enumerate(self.decoder_layers):
      z_BHWC = layer(z_BHWC)
      if i < len(self.decoder_layers) - 1:
        z_BHWC = self.act(z_BHWC)
    return z_BHWC

  def __call__(self, x_BHWC):
    return self.decode(self.encode(x_BHWC))


def model_from_config(config: Config) -> Autoencoder:
  """The config's model: one object per distinct model, so that states built from equal configs
  share their `apply_fn` (a static part of the TrainState, and so of every jit cache key)."""
  return _autoencoder(tuple(config.features), config.activation, config.negative_slope,
                      config.conv_impl)


@functools.cache
def _autoencoder(features, activation, negative_slope, conv_impl) -> Autoencoder:
  return Autoencoder(features=features, activation=activation, negative_slope=negative_slope,
                     conv_impl=conv_impl)

"""The convolutional autoencoder, with PyTorch's layer semantics and initialization.

Kernels are stored HWIO, [kh, kw, in, out]. A PyTorch `Conv2d.weight` [out, in, kh, kw] maps to
`w.transpose(2, 3, 1, 0)`; a PyTorch `ConvTranspose2d.weight` [in, out, kh, kw] maps to
`w.transpose(2, 3, 0, 1)`. With those weights each layer computes what PyTorch's does.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxae.config import Config


def torch_uniform_init(fan_in: int):
  """PyTorch's default Conv/ConvTranspose init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  (kaiming_uniform with a=sqrt(5) gives exactly this bound for weights, and biases use it too.)
  """
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def conv_transpose_reference(x_BHWC, kernel_HWIO, stride: int, padding: int):
  """PyTorch ConvTranspose2d as a convolution of the stride-dilated input with the flipped kernel.

  out[s*i - p + a] += x[i] * w[a]  is  conv(dilate(x, s), flip(w)) with k-1-p padding each side.
  """
  k = kernel_HWIO.shape[0]
  pad = k - 1 - padding
  return jax.lax.conv_general_dilated(
      x_BHWC, kernel_HWIO[::-1, ::-1], window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      lhs_dilation=(stride, stride), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _phase_taps(k: int, stride: int, padding: int):
  """For each output phase r, the (input offset, kernel tap) pairs that reach it.

  Output row y = s*m + r receives x[i] * w[a] exactly when a = s*(m - i) + r + p, so each phase
  is an ordinary stride-1 correlation of x with a sub-kernel of w. Offsets are relative to the
  input padded by `pad_lo` rows on top.
  """
  deltas = {r: [(a, (a - r - padding) // stride) for a in range(k)
                if (a - r - padding) % stride == 0] for r in range(stride)}
  pad_lo = max(d for taps in deltas.values() for _, d in taps)  # Largest m - i.
  pad_hi = -min(d for taps in deltas.values() for _, d in taps)  # Largest i - m.
  return {r: [(pad_lo - d, a) for a, d in taps] for r, taps in deltas.items()}, pad_lo, pad_hi


def conv_transpose_phases(x_BHWC, kernel_HWIO, stride: int, padding: int):
  """The same function as `conv_transpose_reference`, as one matmul per output phase.

  XLA:CPU runs the gradient of an lhs-dilated convolution on a slow path (18 ms of a 21 ms step
  at batch 32). Here every output phase (r, q) is a (k/s)x(k/s) stride-1 correlation, written as
  shifted slices of the padded input concatenated on channels and one matmul; the phases are then
  interleaved (a pixel shuffle). Only slices, concatenation and matmuls: their gradients are fast.
  Requires k - 2p == s (output size == s * input size), true for k=4, s=2, p=1.
  """
  k, _, c_in, c_out = kernel_HWIO.shape
  if k - 2 * padding != stride:
    return conv_transpose_reference(x_BHWC, kernel_HWIO, stride, padding)
  phase_taps, pad_lo, pad_hi = _phase_taps(k, stride, padding)
  n, h, w, _ = x_BHWC.shape
  xp = jnp.pad(x_BHWC, ((0, 0), (pad_lo, pad_hi), (pad_lo, pad_hi), (0, 0)))
  phases = []
  for r in range(stride):
    for q in range(stride):
      pairs = [(oy, a, ox, b) for oy, a in phase_taps[r] for ox, b in phase_taps[q]]
      cols = jnp.concatenate([xp[:, oy:oy + h, ox:ox + w, :] for oy, _, ox, _ in pairs], axis=-1)
      sub_kernel = jnp.concatenate([kernel_HWIO[a, b] for _, a, _, b in pairs], axis=0)
      phases.append(jnp.dot(cols.reshape(n * h * w, -1), sub_kernel))
  y = jnp.stack(phases, axis=1).reshape(n, h, w, stride, stride, c_out)
  return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * stride, w * stride, c_out)


CONV_TRANSPOSE_IMPLS = {"reference": conv_transpose_reference, "phases": conv_transpose_phases}


class TorchConv(nn.Module):
  """PyTorch Conv2d(k, stride, padding) in NHWC."""

  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1

  @nn.compact
  def __call__(self, x_BHWC):
    c_in = x_BHWC.shape[-1]
    init = torch_uniform_init(c_in * self.kernel_size ** 2)
    kernel = self.param("kernel", init, (self.kernel_size, self.kernel_size, c_in, self.features))
    bias = self.param("bias", init, (self.features,))
    p = self.padding
    y = jax.lax.conv_general_dilated(x_BHWC, kernel, (self.stride, self.stride), ((p, p), (p, p)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


class TorchConvTranspose(nn.Module):
  """PyTorch ConvTranspose2d(k, stride, padding) in NHWC; kernel [k, k, in, out]."""

  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1
  impl: str = "phases"

  @nn.compact
  def __call__(self, x_BHWC):
    c_in = x_BHWC.shape[-1]
    # PyTorch computes ConvTranspose fan-in from weight.shape[1], which is the *output* channels.
    init = torch_uniform_init(self.features * self.kernel_size ** 2)
    kernel = self.param("kernel", init, (self.kernel_size, self.kernel_size, c_in, self.features))
    bias = self.param("bias", init, (self.features,))
    y = CONV_TRANSPOSE_IMPLS[self.impl](x_BHWC, kernel, self.stride, self.padding)
    return y + bias


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
  conv_transpose: str = "phases"

  def setup(self):
    if self.conv_transpose not in CONV_TRANSPOSE_IMPLS:
      raise ValueError(f"Unknown conv_transpose {self.conv_transpose!r}; "
                       f"use one of {sorted(CONV_TRANSPOSE_IMPLS)}.")
    self.act = make_activation(self.activation, self.negative_slope)
    self.encoder_layers = [TorchConv(f, name=f"enc{i}") for i, f in enumerate(self.features)]
    widths = list(self.features[-2::-1]) + [self.out_channels]
    self.decoder_layers = [TorchConvTranspose(f, impl=self.conv_transpose, name=f"dec{i}")
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
  return Autoencoder(features=tuple(config.features), activation=config.activation,
                     negative_slope=config.negative_slope, conv_transpose=config.conv_transpose)

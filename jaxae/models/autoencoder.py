"""The original experiment's convolutional autoencoder (the "seed" model).

PyTorch layer semantics and initialization (jaxae/models/layers.py, which also gives the mapping
of a PyTorch state_dict onto these parameters).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxae.models.layers import TorchConv, TorchConvTranspose, check_conv_impl, make_activation


class Autoencoder(nn.Module):
  """Conv 4x4/2 encoder (3 -> features...), mirrored ConvTranspose 4x4/2 decoder, linear output.

  Default: 32x32x3 -> 16x16x16 -> 8x8x32 -> 4x4x64 latent -> back to 32x32x3.
  """

  features: Sequence[int] = (16, 32, 64)
  out_channels: int = 3
  activation: str = "leaky_relu"
  negative_slope: float = 0.01
  conv_impl: str = "gemm"
  # As flax.linen.Conv's (jaxae/models/layers.py): computation and parameter dtypes.
  dtype: Any = None
  param_dtype: Any = jnp.float32
  # The GEMMs' operand dtype (Config.gemm_dtype); None: the computation's.
  operand_dtype: Any = None

  def setup(self):
    check_conv_impl(self.conv_impl)
    self.act = make_activation(self.activation, self.negative_slope)
    layer = dict(impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                 operand_dtype=self.operand_dtype)
    self.encoder_layers = [TorchConv(f, name=f"enc{i}", **layer)
                           for i, f in enumerate(self.features)]
    widths = list(self.features[-2::-1]) + [self.out_channels]
    self.decoder_layers = [TorchConvTranspose(f, name=f"dec{i}", **layer)
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

"""A U-Net-style encoder-decoder sized for CPU training (the "unet" model).

Level i works at 32 / 2**i pixels with `features[i]` channels. The encoder runs, per level, a
3x3 convolution (level 0: two) and, between levels, a 4x4 stride-2 convolution; the decoder goes
back up with 4x4 stride-2 transposed convolutions, concatenates the encoder's features of the same
level (the skip connection) and mixes them with a 3x3 convolution. A 1x1 convolution gives the
output. Every layer is one of PyTorch's Conv2d / ConvTranspose2d shapes that jaxae/conv.py
computes as GEMMs (3x3 stride 1, 4x4 stride 2, 1x1), so the model trains at GEMM speed on CPU.

Why skips: separating a digit from a photo is a per-pixel decision that needs fine detail (stroke
edges) and context (is this a stroke?); the seed autoencoder's 4x4 latent keeps only the latter.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxae.models.layers import TorchConv, TorchConvTranspose, check_conv_impl, make_activation


class UNet(nn.Module):
  """features (16, 32, 64): 32x32x16 -> 16x16x32 -> 8x8x64 -> back up with skips -> out_channels."""

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

  @nn.compact
  def __call__(self, x_BHWC):
    check_conv_impl(self.conv_impl)
    act = make_activation(self.activation, self.negative_slope)
    layer = dict(impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype,
                 operand_dtype=self.operand_dtype)

    def conv3(features, name):
      return TorchConv(features, kernel_size=3, stride=1, padding=1, name=name, **layer)

    skips = []
    for i, f in enumerate(self.features):
      if i == 0:
        x_BHWC = act(conv3(f, "stem")(x_BHWC))
      else:
        x_BHWC = act(TorchConv(f, name=f"down{i}", **layer)(x_BHWC))
      x_BHWC = act(conv3(f, f"enc{i}")(x_BHWC))
      skips.append(x_BHWC)
    for i in range(len(self.features) - 2, -1, -1):
      f = self.features[i]
      x_BHWC = act(TorchConvTranspose(f, name=f"up{i}", **layer)(x_BHWC))
      x_BHWC = act(conv3(f, f"dec{i}")(jnp.concatenate([x_BHWC, skips[i]], axis=-1)))
    return TorchConv(self.out_channels, kernel_size=1, stride=1, padding=0, name="head",
                     **layer)(x_BHWC)

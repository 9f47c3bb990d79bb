"""A params file's model for use outside jaxae: PyTorch's layout, ONNX and StableHLO.

    model = jaxae.load_model("results/rerun_gemm/corrected/params.msgpack")
    blob = export.stablehlo(model)          # jax.export.deserialize(blob).call(images_BHWC)
    proto = export.onnx(model)              # an onnx.ModelProto (the [export] extra)
    state_dict = export.torch_state_dict(model)

Every export computes one part of the model on a batch of any size: "model", the prediction on
normalized mean images [B, 32, 32, 3] (reconstruct: the reconstructions; separate: "digit" and
"photo" in [0, 1]), or for the autoencoder its "encoder" (images -> latent code [B, 4, 4, 64]) or
"decoder" (code -> images) alone. Callers normalize the images as the file's config says
(docs/weights.md). The exports compute the layers as XLA's convolutions (conv_impl "reference"),
one operation each that every runtime has, the same function as the GEMMs jaxae trains with.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import extras
from jaxae.models import model_from_config
from jaxae.pretrained import LoadedModel
from jaxae.weights import to_torch_state_dict

FORMATS = ("torch", "onnx", "stablehlo")
PARTS = ("model", "encoder", "decoder")
# What a StableHLO export runs on by default: jax.export lowers for each, on any machine.
PLATFORMS = ("cpu", "cuda")


def part_function(loaded: LoadedModel, part: str = "model"
                  ) -> tuple[Callable[[jax.Array], Any], tuple[int, ...]]:
  """(f, the shape of one input example): f maps a batch to the part's outputs, parameters bound.

  Raises:
    ValueError: an unknown part, an encoder or decoder of a model without one (the U-Net), or a
      model of several stacked seeds.
  """
  if part not in PARTS:
    raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}.")
  if (seeds := loaded.config.num_seeds) > 1:
    raise ValueError(f"the file holds {seeds} seeds, stacked; export one of them: "
                     f"--replica=0..{seeds - 1} (load_model(path, replica=k)).")
  config = loaded.config.replace(conv_impl="reference")
  portable = LoadedModel(model=model_from_config(config, loaded.task.out_channels),
                         params=loaded.params, task=loaded.task, config=config)
  params = loaded.params
  if part == "encoder":
    return lambda images: portable.encode(params, images), (32, 32, 3)
  if part == "decoder":
    latent_shape = jax.eval_shape(portable.encode, params, jnp.zeros((1, 32, 32, 3))).shape[1:]
    return lambda latent: portable.decode(params, latent), tuple(latent_shape)
  if loaded.config.task == "reconstruct":  # One output, as the model's own.
    return lambda images: portable.task.predict(portable.model.apply, params, images)[
        "reconstructions"], (32, 32, 3)
  return lambda images: portable.task.predict(portable.model.apply, params, images), (32, 32, 3)


def torch_state_dict(loaded: LoadedModel) -> dict[str, np.ndarray]:
  """The original notebook's state_dict (`encoder.0.weight`, ...) of a "seed" reconstruct model
  (weights.to_torch_state_dict; ParamsFileError for any other)."""
  return to_torch_state_dict(loaded.params, loaded.config)


def save_torch(loaded: LoadedModel) -> bytes:
  """`torch_state_dict` as a safetensors file's bytes (`safetensors.torch.load_file` reads it)."""
  safetensors_numpy = extras.load("safetensors.numpy", "export")
  return safetensors_numpy.save(torch_state_dict(loaded), metadata={"format": "pt"})


def stablehlo(loaded: LoadedModel, part: str = "model",
              platforms: tuple[str, ...] = PLATFORMS) -> bytes:
  """The part as serialized `jax.export` StableHLO, with a symbolic batch size.

  Runs with jax alone: `jax.export.deserialize(blob).call(x)`, on any of `platforms`.
  """
  fn, shape = part_function(loaded, part)
  batch = jax.export.symbolic_shape("batch")
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(
      jax.ShapeDtypeStruct((*batch, *shape), jnp.float32))
  return bytes(exported.serialize())


def onnx(loaded: LoadedModel, part: str = "model"):
  """The part as an ONNX model (onnx.ModelProto) with a symbolic batch dimension "batch".

  Input "images" (or the decoder's "latent"); output "reconstructions", the encoder's "latent",
  the decoder's "images", or for separation two, "digit" and "photo".
  """
  jax2onnx = extras.load("jax2onnx", "export")
  fn, shape = part_function(loaded, part)
  # Traced by JAX first: constants computed as it traces (the digit28 separation's resize
  # matrices, cached) are then not computed again under jax2onnx's replaced jax.image.resize,
  # which cannot run eagerly.
  out = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
  outputs = sorted(out) if isinstance(out, dict) else [_NAMES[part][1]]  # jax's dict order.
  return jax2onnx.to_onnx(fn, inputs=[("batch", *shape)], model_name=f"jaxae_{part}",
                          input_names=[_NAMES[part][0]], output_names=outputs)


# (input, output) of each part, as ONNX names them.
_NAMES = {"model": ("images", "reconstructions"), "encoder": ("images", "latent"),
          "decoder": ("latent", "images")}


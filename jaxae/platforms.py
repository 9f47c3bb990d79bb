"""What runs fastest on each kind of device: conv formulation, batch sizes, replica strategy.

Every choice is a function of the platform name ("cpu", "gpu", "tpu"; `platform_of(mesh)`),
so each branch can be tested on any machine. `Config.conv_impl="auto"` (the default) resolves
here, and so do the batch sizes a run uses when the caller does not give them.

On CPU and GPU the layers run as GEMMs (jaxae/conv.py): XLA:CPU's own convolution gradients are
slow, and cuDNN's convolutions of these small layers trained slower than the GEMMs. The CPU trains
in microbatches and evaluates in batches small enough to keep the activations in L2 cache; the GPU
takes whole batches. TPUs get XLA's convolutions, unmeasured. The measurements behind each value:
docs/speed.md.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh

from jaxae.config import Config
from jaxae.conv import CONV_IMPLS

AUTO = "auto"
# What Config.conv_impl (and the scripts' --config.conv_impl) accepts.
CONV_IMPL_CHOICES = (AUTO, *sorted(CONV_IMPLS))


@dataclasses.dataclass(frozen=True)
class PlatformChoices:
  """How a run computes on one platform (all choices compute the same numbers)."""

  platform: str
  # A key of jaxae.conv.CONV_IMPLS.
  conv_impl: str
  # Training steps over more examples per device than this sum their gradient over microbatches
  # of this size; None: each device's share of the batch in one pass.
  microbatch_per_device: int | None
  # The full-batch (faithful) step sums its gradient over chunks of this many examples.
  full_batch_chunk: int
  # Examples per evaluation call.
  eval_batch_size: int
  # How the replicas of a multi-seed run share the device: "vmap" or "loop" (jaxae/loop.py).
  replica_strategy: str

  def describe(self) -> str:
    micro = (f"microbatches of {self.microbatch_per_device} per device"
             if self.microbatch_per_device else "whole batches")
    return (f"{self.platform}: conv {self.conv_impl}, {micro}, full-batch chunks of "
            f"{self.full_batch_chunk}, evaluation batches of {self.eval_batch_size}")


# (training microbatch per device, evaluation batch) per model on CPU: the fastest measured,
# small enough for the activations to stay in cache.
CPU_BATCH_SIZES = {"seed": (64, 100), "unet": (8, 8)}
# Full-batch chunks on CPU: small ones stay in cache.
CPU_FULL_BATCH_CHUNK = 32
# Accelerators: (full-batch chunk, evaluation batch) per model, large enough to fill a GPU,
# small enough for any GPU's memory (the U-Net's activations are ~10x the seed model's).
ACCELERATOR_BATCH_SIZES = {"seed": (2048, 2000), "unet": (256, 500)}

# Replicas on CPU run one after another: vmapping them pushed the step's activations out of
# cache (docs/seeds.md).


def check_conv_impl_choice(conv_impl: str) -> None:
  """Raises ValueError (one line, naming the field) unless `conv_impl` is a Config.conv_impl."""
  if conv_impl not in CONV_IMPL_CHOICES:
    raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPL_CHOICES)}, "
                     f"got {conv_impl!r}.")


def platform_of(mesh: Mesh) -> str:
  """The platform name of the mesh's devices ("cpu", "gpu", "tpu")."""
  return mesh.devices.flat[0].platform


def resolve_conv_impl(conv_impl: str, platform: str, *, forward_mode: bool = True) -> str:
  """`conv_impl` itself, or for "auto" the platform's formulation.

  On CPU and GPU the GEMM layers: "gemm" (every transformation, jvp included), or with
  `forward_mode=False` (a caller that only takes gradients, like a training run) "gemm_vjp",
  faster to train on CPU. On TPU XLA's convolutions ("reference").
  """
  if conv_impl != AUTO:
    return conv_impl
  if platform in ("cpu", "gpu"):
    return "gemm" if forward_mode else "gemm_vjp"
  return "reference"


def choices(config: Config, platform: str, *, forward_mode: bool = False) -> PlatformChoices:
  """How `config`'s model runs on `platform`; a training run needs no forward mode."""
  conv_impl = resolve_conv_impl(config.conv_impl, platform, forward_mode=forward_mode)
  strategy = replica_strategy(platform, config.num_seeds)
  if platform == "cpu":
    micro, eval_batch = CPU_BATCH_SIZES[config.model]
    return PlatformChoices(platform, conv_impl, micro, min(CPU_FULL_BATCH_CHUNK, micro),
                           eval_batch, strategy)
  chunk, eval_batch = ACCELERATOR_BATCH_SIZES[config.model]
  return PlatformChoices(platform, conv_impl, None, chunk, eval_batch, strategy)


def replica_strategy(platform: str, replicas: int) -> str:
  """How `replicas` seeds run on `platform` (jaxae.seeds.over_replicas): one replica runs the
  single-seed program itself, so a run of one seed computes bitwise what a plain state does."""
  return "loop" if platform == "cpu" or replicas == 1 else "vmap"

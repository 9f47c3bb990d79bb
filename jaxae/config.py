"""Experiment configuration: one frozen dataclass, defaults = the original experiment."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Normalization:
  """Per-channel `(x - mean) / std`, applied to images already scaled to [0, 1]."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]

  def __post_init__(self):
    if len(self.mean) != 3 or len(self.std) != 3:
      raise ValueError(f"Normalization needs 3 means and 3 stds, got {self.mean}, {self.std}.")
    if any(s <= 0 for s in self.std):
      raise ValueError(f"Normalization stds must be positive, got {self.std}.")


# The original's conventions: ImageNet statistics for MNIST, 0.5/0.5 for CIFAR-10.
MNIST_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CIFAR_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a training run's numbers.

  Two runs with equal configs (and equal data) produce equal histories.
  """

  # Model.
  features: tuple[int, ...] = (16, 32, 64)
  activation: str = "leaky_relu"
  negative_slope: float = 0.01
  # How the Conv and ConvTranspose layers are computed (jaxae/conv.py): "gemm" (fast) or
  # "reference" (lax convolutions). Both compute PyTorch's layers with the same weights.
  conv_impl: str = "gemm"
  # Optimizer.
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  # Procedure.
  epochs: int = 50
  batch_size: int = 32
  seed: int = 0
  # The original's procedure: one optimizer step on the whole training set per epoch.
  full_batch: bool = False
  # Data conventions.
  mnist_normalization: Normalization = MNIST_NORMALIZATION
  cifar_normalization: Normalization = CIFAR_NORMALIZATION

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Config":
    d = dict(d)
    for key in ("mnist_normalization", "cifar_normalization"):
      if key in d and isinstance(d[key], dict):
        d[key] = Normalization(mean=tuple(d[key]["mean"]), std=tuple(d[key]["std"]))
    if "features" in d:
      d["features"] = tuple(d["features"])
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})

"""jaxae: the MNIST + CIFAR-10 mean-image experiment (reconstruct, separate) in functional JAX."""

import sys

from jaxae.config import CIFAR_NORMALIZATION, MNIST_NORMALIZATION, Config, Normalization
from jaxae.dataset import MixedSplit, load_mixed, mix
from jaxae.metrics import image_quality, psnr, ssim, unit_psnr, unit_ssim
from jaxae.models import Autoencoder, UNet, model_from_config
from jaxae.preprocess import mean_images, to_unit_range
from jaxae.pretrained import LoadedModel, load_model
from jaxae.sources import DatasetNotFoundError, load_split, load_splits
from jaxae.steps import TrainState, check_config, create_train_state, eval_step, train_step
from jaxae.tasks import Reconstruct, Separate, task_from_config
from jaxae.weights import ParamsFileError, from_torch_state_dict, load_params, save_params

__all__ = [
    "Autoencoder", "check_config", "CIFAR_NORMALIZATION", "Config", "create_train_state",
    "DatasetNotFoundError", "eval_step", "from_torch_state_dict", "image_quality",
    "load_mixed", "load_model", "load_params", "load_split", "load_splits", "LoadedModel",
    "mean_images", "mix", "MixedSplit", "MNIST_NORMALIZATION", "model_from_config",
    "Normalization", "ParamsFileError", "psnr", "Reconstruct", "save_params", "Separate",
    "ssim", "task_from_config", "to_unit_range", "train_step", "TrainState", "UNet",
    "unit_psnr", "unit_ssim",
]
__version__ = "0.1.0"

# Modules that moved when the package split into the core, run/ and report/ (docs/design.md): an
# import of the old name fails with one line naming the new one.
MOVED_MODULES = {
    "jaxae.train": "jaxae.steps", "jaxae.experiment": "jaxae.run.train_and_evaluate",
    "jaxae.cli": "jaxae.run.scripts", "jaxae.checkpoints": "jaxae.run.checkpoints",
    "jaxae.workdir": "jaxae.run.workdir", "jaxae.provenance": "jaxae.run.provenance",
    "jaxae.plots": "jaxae.report.figures", "jaxae.monitoring": "jaxae.report.tensorboard",
    "jaxae.progress": "jaxae.report.progress",
}


class _MovedModuleFinder:
  """Finds nothing; refuses a moved module's old name with its new one."""

  @staticmethod
  def find_spec(name, path=None, target=None):
    del path, target
    if name in MOVED_MODULES:
      raise ModuleNotFoundError(f"{name} moved to {MOVED_MODULES[name]}; import that instead "
                                "(docs/design.md).", name=name)
    return None


def __getattr__(name):
  if f"jaxae.{name}" in MOVED_MODULES:
    raise AttributeError(f"jaxae.{name} moved to {MOVED_MODULES['jaxae.' + name]} "
                         "(docs/design.md).")
  raise AttributeError(f"module 'jaxae' has no attribute {name!r}")


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
  sys.meta_path.append(_MovedModuleFinder())

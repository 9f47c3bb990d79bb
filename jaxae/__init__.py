"""jaxae: the MNIST + CIFAR-10 mean-image experiment (reconstruct, separate) in functional JAX."""

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

"""Separation with the U-Net and a cosine learning-rate decay over 16 epochs: the best separation.

Results: results/separate_unet_cosine (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_unet_cosine.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet_cosine

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", lr_schedule="cosine", epochs=16))

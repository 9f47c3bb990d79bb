"""Separation with the U-Net (skip connections), constant learning rate, 12 epochs.

Results: results/separate_unet (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_unet.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", epochs=12))

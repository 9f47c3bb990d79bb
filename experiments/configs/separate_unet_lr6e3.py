"""Separation with the U-Net, cosine decay over 16 epochs from a 6x higher learning rate.

Adam at 6e-3 after 500 warmup steps, instead of 1e-3: the best separation within 30 minutes
of the 2-core CPU. Results: results/separate_unet_lr6e3 (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_unet_lr6e3.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet_lr6e3

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", lr_schedule="cosine", epochs=16,
                               learning_rate=6e-3, warmup_steps=500))

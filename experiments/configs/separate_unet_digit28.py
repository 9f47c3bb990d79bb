"""Separation with the U-Net whose digit is made what every true digit is: the bilinear resize of
a 28x28 digit in [0, 1] (separation "digit28", jaxae/tasks/separate.py).

Otherwise separate_unet_lr6e3.py (cosine decay over 16 epochs, batch 32, 500 warmup steps) but
at Adam 3e-3: at 6e-3 this run's loss jumped in epoch 5 and had not recovered by epoch 7.
Results: results/separate_unet_digit28 (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_unet_digit28.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet_digit28

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", separation="digit28",
                               lr_schedule="cosine", epochs=16, learning_rate=3e-3,
                               warmup_steps=500))

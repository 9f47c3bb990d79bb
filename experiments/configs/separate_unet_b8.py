"""Separation with the U-Net in batches of 8: four times the optimizer steps of batch 32 in the
same time (the U-Net trains in microbatches of 8 on CPU either way).

Adam at 3e-3 after 500 warmup steps, cosine decay over 16 epochs; otherwise
separate_unet_lr6e3.py. Results: results/separate_unet_b8 (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_unet_b8.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet_b8

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", lr_schedule="cosine", epochs=16,
                               batch_size=8, learning_rate=3e-3, warmup_steps=500))

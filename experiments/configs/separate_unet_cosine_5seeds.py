"""Separation with the U-Net and a cosine decay over 16 epochs for seeds 0..4, as one run.

Results: results/separate_unet_cosine_5seeds (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_unet_cosine_5seeds.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet_cosine_5seeds

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", lr_schedule="cosine", epochs=16,
                               num_seeds=5))

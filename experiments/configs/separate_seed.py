"""Separation with the original autoencoder: estimate each mean image's digit (the photo is what
the mean leaves), 50 epochs.

Results: results/separate_seed (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_seed.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_seed

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate"))

"""Separation with the original autoencoder for seeds 0..4, trained as one program, 50 epochs.

Results: results/separate_seed_5seeds (RESULTS.md).

    python experiments/train.py --config=experiments/configs/separate_seed_5seeds.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_seed_5seeds

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", num_seeds=5))

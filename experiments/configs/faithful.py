"""The original experiment as published: one full-batch Adam step per epoch (its bug), 50 epochs.

Results: results/faithful (RESULTS.md).

    python experiments/train.py --config=experiments/configs/faithful.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/faithful

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(full_batch=True))

"""The original experiment with its training corrected: minibatches of 32, 50 epochs (the default).

Results: results/corrected (RESULTS.md).

    python experiments/train.py --config=experiments/configs/corrected.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/corrected

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config())

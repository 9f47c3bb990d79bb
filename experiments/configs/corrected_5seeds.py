"""The corrected experiment for seeds 0..4, trained as one program.

Results: results/corrected_5seeds (RESULTS.md).

    python experiments/train.py --config=experiments/configs/corrected_5seeds.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/corrected_5seeds

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(num_seeds=5))

"""The fast recipe (fast.py) for seeds 0..4, trained as one program.

Results: results/fast_5seeds (RESULTS.md, "Time to quality").

    python experiments/train.py --config=experiments/configs/fast_5seeds.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/fast_5seeds

Any field can be overridden: --config.epochs=4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(optimizer="muon", muon_learning_rate=0.01, learning_rate=6e-3,
                               lr_schedule="cosine", epochs=3, batch_size=32,
                               num_seeds=5))

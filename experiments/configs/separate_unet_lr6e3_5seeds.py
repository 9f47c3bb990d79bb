"""The separation of separate_unet_lr6e3.py for seeds 0..4, as one run (about 2.3 hours on the
2-core CPU: the replicas train one after another there).

Results: results/separate_unet_lr6e3_5seeds (RESULTS.md, "Separation").

    python experiments/train.py --config=experiments/configs/separate_unet_lr6e3_5seeds.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet_lr6e3_5seeds

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", lr_schedule="cosine", epochs=16,
                               learning_rate=6e-3, warmup_steps=500, num_seeds=5))

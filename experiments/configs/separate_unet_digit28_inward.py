"""separate_unet_digit28.py with the clip's gradient passed only where descent moves a value
back towards [0, 1] (digit28_gradient "inward").

Why: straight through, the fitted 28x28 digit's values outside [0, 1] drift without bound
(separate_unet_digit28's reach -5.5; the re-paired run reached -2,700 as it diverged), pushed
where the push changes nothing. jaxae/tasks.py. At separate_unet_lr6e3.py's Adam 6e-3 this run
was unstable too (test loss -2.832 after epoch 2, -2.512 after 3; RESULTS.md), so 3e-3.

    python experiments/train.py --config=experiments/configs/separate_unet_digit28_inward.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/separate_unet_digit28_inward

Any field can be overridden: --config.epochs=10, --config.learning_rate=3e-4 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(task="separate", model="unet", separation="digit28",
                               digit28_gradient="inward", lr_schedule="cosine", epochs=16,
                               learning_rate=3e-3, warmup_steps=500))

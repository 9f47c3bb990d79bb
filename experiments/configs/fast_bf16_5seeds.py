"""The fast recipe for seeds 0..4 with the layers' GEMM operands in bfloat16 (products summed in
float32), for hardware with bfloat16 GEMM units: AMX or AVX512-BF16 CPUs, GPUs.

Results: results/fast_bf16_5seeds (RESULTS.md, "Time to quality"); docs/speed.md, "bfloat16".

    python experiments/train.py --config=experiments/configs/fast_bf16_5seeds.py \
        --data_dir=../shared/tensorflow_datasets --workdir=runs/fast_bf16_5seeds

Any field can be overridden: --config.num_seeds=1 (jaxae/config.py).
"""

from jaxae.config import Config, to_config_dict


def get_config():
  return to_config_dict(Config(optimizer="muon", muon_learning_rate=0.01, learning_rate=6e-3,
                               lr_schedule="cosine", epochs=3, batch_size=32, num_seeds=5,
                               gemm_dtype="bfloat16"))

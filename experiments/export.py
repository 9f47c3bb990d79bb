r"""Exports a params file's model for use outside jaxae: PyTorch, ONNX or StableHLO.

    python experiments/export.py --params=results/rerun_gemm/corrected/params.msgpack \
        --format=torch --output=corrected.safetensors
    python experiments/export.py --params=results/separate_unet_digit28/params.msgpack \
        --format=onnx --output=separate.onnx
    python experiments/export.py --params=results/corrected_5seeds/params.msgpack --replica=0 \
        --format=stablehlo --part=encoder --output=encoder.stablehlo

torch: a safetensors file of the original notebook's state_dict (the autoencoder class of
docs/weights.md loads it with strict=True); the original model only. onnx: an ONNX model with a
symbolic batch dimension. stablehlo: jax.export's serialized StableHLO for CPU and CUDA, which
`jax.export.deserialize(blob).call(images)` runs with jax alone. Each computes the prediction on
normalized mean images, or with --part the autoencoder's encoder or decoder (docs/weights.md).
A params file of several seeds needs --replica. An existing --output is replaced only with
--overwrite.
"""

import pathlib

from absl import flags

from jaxae import export
from jaxae.extras import MissingExtraError
from jaxae.files import write_atomically
from jaxae.pretrained import load_model
from jaxae.run import scripts
from jaxae.weights import ParamsFileError

FLAGS = flags.FLAGS
flags.DEFINE_string("params", None, "The params file to export (a run's params.msgpack, or one "
                    "of results/*/params.msgpack).")
flags.DEFINE_enum("format", None, export.FORMATS, "What to write.")
flags.DEFINE_string("output", None, "The file to write.")
flags.DEFINE_enum("part", "model", export.PARTS, "The prediction ('model'), or the autoencoder's "
                  "encoder or decoder alone (not with --format=torch, which holds the weights).")
flags.DEFINE_integer("replica", None, "Which seed of a params file of several (0-based).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def main(argv):
  scripts.start(argv)
  for name in ("params", "format", "output"):
    if not FLAGS[name].value:
      scripts.fail(f"--{name} is required.")
  output = pathlib.Path(FLAGS.output)
  scripts.check_output_file("output", FLAGS.output)
  if output.exists() and not FLAGS.overwrite:
    scripts.fail(f"--output={output} exists; pass --overwrite to replace it.")
  if FLAGS.format == "torch" and FLAGS.part != "model":
    scripts.fail("--format=torch holds the whole model's weights; --part is for onnx and "
                 "stablehlo.")
  try:
    loaded = load_model(FLAGS.params, replica=FLAGS.replica)
    if FLAGS.format == "torch":
      data = export.save_torch(loaded)
    elif FLAGS.format == "onnx":
      data = export.onnx(loaded, FLAGS.part).SerializeToString()
    else:
      data = export.stablehlo(loaded, FLAGS.part)
  except (ParamsFileError, ValueError, MissingExtraError) as e:
    scripts.fail(str(e))
  try:
    write_atomically(output, lambda f: f.write(data))
  except OSError as e:
    scripts.fail(f"could not write {output} ({e.strerror or e}).")
  scripts.say(f"Wrote the {FLAGS.part if FLAGS.format != 'torch' else 'weights'} of "
              f"{FLAGS.params} ({loaded.config.model}, {loaded.config.task}) as {FLAGS.format} to "
              f"{output} ({len(data):,} bytes).")


if __name__ == "__main__":
  scripts.run(main)

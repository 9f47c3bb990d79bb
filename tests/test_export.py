"""Exports (jaxae/export.py, experiments/export.py) run in other runtimes as jaxae computes.

Tolerance: the exports compute the layers as XLA's convolutions, jaxae on CPU as GEMMs, and
ONNX Runtime with its own kernels: the same sums in other orders, so float32 rounding differs
by a few units in the last place of each of the six layers' outputs, about 1e-6 of values of
order 1. 1e-4 absolute is a hundred times that, and a thousand times smaller than one grey level
of a displayed image (1/255 of the range).
"""

import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO, numpy_torch_forward, run_script, torch_layers
from jaxae import Config, export, from_torch_state_dict, load_model
from jaxae.weights import ParamsFileError, to_torch_state_dict

CORRECTED = REPO / "results/rerun_gemm/corrected/params.msgpack"
SEPARATE = REPO / "results/separate_unet_digit28/params.msgpack"
ATOL = 1e-4


def _images(batch: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1.5, 1.8, (batch, 32, 32, 3)).astype(np.float32)


def _expected(loaded, part, x):
  """jaxae's own outputs (as the run computed them: the GEMM layers, jitted)."""
  fn = {"encoder": loaded.encode, "decoder": loaded.decode}.get(
      part, lambda p, images: loaded.task.predict(loaded.model.apply, p, images))
  out = jax.jit(fn)(loaded.params, x)
  if not isinstance(out, dict):
    return {"out": out}
  return {"out": out["reconstructions"]} if "reconstructions" in out else out


def _inputs(loaded, part, batch):
  if part == "decoder":  # Latent codes of real shape and scale.
    return np.asarray(jax.jit(loaded.encode)(loaded.params, _images(batch, 1)))
  return _images(batch)


def _as_one_sequential(state_dict):
  """The notebook's keys as one nn.Sequential's (encoder 0, 2, 4; decoder 6, 8, 10), the layout
  of conftest's NumPy forward pass of PyTorch's layers."""
  return {f"{int(k.split('.')[1]) + (6 if k.startswith('decoder') else 0)}.{k.split('.')[2]}":
          v.astype(np.float64) for k, v in state_dict.items()}


def test_the_torch_layout_is_the_notebook_s_and_reads_back_bit_for_bit():
  loaded = load_model(CORRECTED)
  state_dict = export.torch_state_dict(loaded)
  assert list(state_dict) == [f"{part}.{i}.{kind}" for part in ("encoder", "decoder")
                              for i in (0, 2, 4) for kind in ("weight", "bias")]
  assert state_dict["encoder.0.weight"].shape == (16, 3, 4, 4)     # Conv2d: [out, in, kh, kw].
  assert state_dict["decoder.0.weight"].shape == (64, 32, 4, 4)    # ConvTranspose2d: [in, out, ..].
  # A safetensors file lists its keys in alphabetical order: decoder before encoder.
  from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
  read = load(export.save_torch(loaded))
  assert sorted(read) == sorted(state_dict) and list(read) != list(state_dict)
  back = from_torch_state_dict(read, loaded.config)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(loaded.params),
                          jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  x = _images(3)
  expected = np.asarray(_expected(loaded, "model", x)["out"])
  torch_out = numpy_torch_forward(_as_one_sequential(read),
                                  x.transpose(0, 3, 1, 2).astype(np.float64), torch_layers())
  np.testing.assert_allclose(torch_out.transpose(0, 2, 3, 1), expected, atol=ATOL)


def test_only_the_original_model_has_the_torch_layout():
  with pytest.raises(ParamsFileError, match="original model only.*model='unet'"):
    export.torch_state_dict(load_model(SEPARATE))
  with pytest.raises(ParamsFileError, match="original model only"):
    to_torch_state_dict({}, Config(task="separate"))


def test_the_u_net_has_no_encoder_of_its_own():
  loaded = load_model(SEPARATE)
  with pytest.raises(ValueError, match="no encoder of its own"):
    loaded.encode(loaded.params, _images(1))


# A process with jax alone: importing jaxae or flax there fails, and neither is loaded at the end.
STABLEHLO_RUNNER = textwrap.dedent("""
    import importlib.abc, sys
    class Refuse(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jaxae", "flax"):
          raise ImportError(f"{name} must not be imported here")
    sys.meta_path.insert(0, Refuse())
    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    inputs = np.load(sys.argv[2])
    outputs = {}
    for batch, x in inputs.items():
      out = exported.call(x)
      for name, value in (out.items() if isinstance(out, dict) else [("out", out)]):
        outputs[f"{batch}/{name}"] = np.asarray(value)
    np.savez(sys.argv[3], **outputs)
    assert not any(m.split(".")[0] in ("jaxae", "flax") for m in sys.modules)
    print(exported.in_avals[0].shape, exported.platforms)
""")


@pytest.mark.slow
@pytest.mark.parametrize("path, part", [(CORRECTED, "model"), (CORRECTED, "encoder"),
                                        (CORRECTED, "decoder"), (SEPARATE, "model")])
def test_stablehlo_runs_with_jax_alone_at_any_batch_size(tmp_path, path, part):
  loaded = load_model(path)
  blob = export.stablehlo(loaded, part)
  (tmp_path / "f.stablehlo").write_bytes(blob)
  inputs = {str(b): _inputs(loaded, part, b) for b in (1, 64)}
  np.savez(tmp_path / "in.npz", **inputs)
  run = subprocess.run([sys.executable, "-c", STABLEHLO_RUNNER, str(tmp_path / "f.stablehlo"),
                        str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.startswith("(batch, ") and "'cuda'" in run.stdout, run.stdout
  got = np.load(tmp_path / "out.npz")
  for b, x in inputs.items():
    for name, value in _expected(loaded, part, x).items():
      assert got[f"{b}/{name}"].shape == value.shape
      np.testing.assert_allclose(got[f"{b}/{name}"], np.asarray(value), atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("path, part", [(CORRECTED, "model"), (CORRECTED, "encoder"),
                                        (CORRECTED, "decoder"), (SEPARATE, "model")])
def test_onnx_runs_in_onnx_runtime_at_any_batch_size(path, part):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  loaded = load_model(path)
  proto = export.onnx(loaded, part)
  session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
  [feed] = session.get_inputs()
  assert isinstance(feed.shape[0], str)  # Symbolic: any batch size.
  names = [o.name for o in session.get_outputs()]
  for batch in (1, 64):
    x = _inputs(loaded, part, batch)
    got = dict(zip(names, session.run(None, {feed.name: x})))
    expected = _expected(loaded, part, x)
    if set(expected) != {"out"}:
      assert set(got) == set(expected)  # Named as jaxae names them: "digit", "photo".
    else:
      assert names == [{"model": "reconstructions", "encoder": "latent",
                        "decoder": "images"}[part]]
      got = {"out": got[names[0]]}
    for name, value in expected.items():
      np.testing.assert_allclose(got[name], np.asarray(value), atol=ATOL)


@pytest.mark.slow
def test_the_script_writes_each_format_and_refuses_what_cannot_be_exported(tmp_path):
  out = tmp_path / "corrected.safetensors"
  run = run_script("export.py", f"--params={CORRECTED}", "--format=torch", f"--output={out}")
  assert run.returncode == 0 and "Wrote" in run.stdout, run.stderr
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  assert sorted(load_file(out)) == sorted(export.torch_state_dict(load_model(CORRECTED)))
  refusals = [
      ([f"--params={CORRECTED}", "--format=torch", f"--output={out}"], "exists; pass --overwrite"),
      ([f"--params={SEPARATE}", "--format=torch", f"--output={tmp_path / 'u.st'}"],
       "original model only"),
      ([f"--params={SEPARATE}", "--format=stablehlo", "--part=encoder",
        f"--output={tmp_path / 'e'}"], "no encoder of its own"),
      ([f"--params={REPO / 'results/corrected_5seeds/params.msgpack'}", "--format=stablehlo",
        f"--output={tmp_path / 'five'}"],
       "holds 5 seeds, stacked; export one of them: --replica=0..4"),
      ([f"--params={tmp_path / 'missing.msgpack'}", "--format=onnx", f"--output={tmp_path / 'm'}"],
       "cannot read"),
  ]
  for args, message in refusals:
    run = run_script("export.py", *args)
    assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, (
        args, run.stderr)
  assert not (tmp_path / "u.st").exists() and not (tmp_path / "five").exists()
  five = tmp_path / "replica3.stablehlo"
  run = run_script("export.py", f"--params={REPO / 'results/corrected_5seeds/params.msgpack'}",
                   "--replica=3", "--format=stablehlo", f"--output={five}")
  assert run.returncode == 0 and five.stat().st_size > 0, run.stderr

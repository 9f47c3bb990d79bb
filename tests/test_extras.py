"""The core install runs the library; a missing extra is one line naming it (jaxae/extras.py)."""

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from jaxae import extras

# A process where no package of any extra can be imported, as after `pip install .` alone:
# `sys.modules[name] = None` makes both `import name` and importlib.util.find_spec say "absent".
WITHOUT_EXTRAS = "import sys\nfor name in {names!r}:\n  sys.modules[name] = None\n"
EXTRA_MODULES = sorted({m for modules in extras.MODULES.values() for m in modules}
                       | {"tensorboard", "notebook", "onnx", "onnxruntime"})


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS.format(names=EXTRA_MODULES) + code,
                         *args], capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.slow
def test_the_library_runs_without_any_extra(tmp_path):
  run = _python(textwrap.dedent(f"""
      import jax, jax.numpy as jnp, numpy as np
      import jaxae
      from jaxae.run.checkpoints import Checkpointer
      model = jaxae.load_model("results/rerun_gemm/corrected/params.msgpack")
      images = jnp.zeros((2, 32, 32, 3))
      out = jax.jit(model.predict)(model.params, images)["reconstructions"]
      config = jaxae.Config(features=(4,))
      state = jaxae.create_train_state(jax.random.key(0), config)
      state, metrics = jax.jit(jaxae.train_step)(state, images)
      print(float(jaxae.psnr(images, out).mean()) > 0, float(metrics["loss"]) >= 0)
      checkpointer = Checkpointer({str(tmp_path / "checkpoints")!r})
      checkpointer.save(1, state, [{{"epoch": 1}}])
      checkpointer.close()
      loaded = [m for m in {EXTRA_MODULES!r} if sys.modules.get(m) is not None]
      print("extras loaded:", loaded)
  """))
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.split("\n")[:2] == ["True True", "extras loaded: []"], run.stdout


@pytest.mark.parametrize("module, extra", [("tensorflow_datasets", "data"), ("cv2", "data"),
                                           ("matplotlib", "run"), ("safetensors", "export")])
def test_a_missing_extra_is_named(monkeypatch, module, extra):
  monkeypatch.setitem(sys.modules, module, None)
  with pytest.raises(extras.MissingExtraError, match=rf"comes with jaxae's '{extra}' extra.*"
                                                     rf"pip install -e '\.\[{extra}\]'"):
    extras.require(extra)
  with pytest.raises(extras.MissingExtraError, match=f"'{extra}' extra"):
    extras.load(module, extra)


def test_a_script_without_its_extra_says_so_in_one_line(tmp_path):
  run = _python("import runpy\nsys.argv = sys.argv[1:]\n"
                "runpy.run_path('experiments/train.py', run_name='__main__')\n",
                "experiments/train.py", f"--workdir={tmp_path / 'w'}")
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stderr.count("\n") == 1 and "jaxae's 'data' extra" in run.stderr, run.stderr
  assert not (tmp_path / "w").exists()

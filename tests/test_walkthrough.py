"""experiments/walkthrough.ipynb: its saved outputs, and the notebook run on a small slice."""

import re

import pytest

from conftest import REPO, shared_data_dir

NOTEBOOK = REPO / "experiments" / "walkthrough.ipynb"


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def _read(path):
  # Imported here, not when the file is collected: with Jupyter installed, nbformat's JSON schema
  # checker imports a URI grammar that takes about 3 s to build, in every pytest worker.
  import nbformat  # pylint: disable=import-outside-toplevel
  return nbformat.read(path, as_version=4)


def test_the_notebook_is_saved_with_its_outputs_and_pictures():
  # It must read on a repository page: every code cell ran, in order, without an error.
  nb = _read(NOTEBOOK)
  cells = _code_cells(nb)
  assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
  outputs = [o for c in cells for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert all(c.outputs for c in cells[1:]), "a code cell has no output"
  pictures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(pictures) >= 5
  assert "| full data" in "".join(o.get("text", "") for o in outputs)


@pytest.mark.slow
def test_the_notebook_runs_on_a_small_slice(monkeypatch):
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("JAXAE_WALKTHROUGH_TINY", "1")
  # The notebook's code is under test here, not its numbers (but for a bound on the published
  # weights' PSNR), so its kernel compiles with most of XLA's optimizations off, as
  # tests/test_docs.py runs docs/library.md: the original model's programs compile in about half
  # the CPU time and run a few steps each.
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  monkeypatch.setenv("JAXAE_DATA_DIR", str(shared_data_dir()))
  nb = _read(NOTEBOOK)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(REPO)}}).execute()
  text = "".join(o.get("text", "") for c in _code_cells(nb) for o in c.outputs)
  assert "| tiny run" in text
  # The published weights score as published, whatever the slice.
  psnr = float(re.search(r"published, 50 epochs: PSNR ([\d.]+) dB", text).group(1))
  assert psnr > 38.0

"""The docs tell the truth: their code runs as written (docs/library.md, RESULTS.md), and every
path they, the package and the scripts name exists.

    python tests/test_docs.py library.md    # runs the page's blocks in order, as the test does
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _file(page: str) -> pathlib.Path:
  """A page of docs/ by its name, or a file of the repository's root (RESULTS.md)."""
  return REPO / page if (REPO / page).is_file() else REPO / "docs" / page


def blocks(page: str) -> list[str]:
  return BLOCK.findall(_file(page).read_text())


def run_page(page: str) -> None:
  """Executes the page's Python blocks in order in one namespace, from the repository's root (the
  page's paths are the repository's); exits naming the block that failed."""
  os.chdir(REPO)
  namespace = {"__name__": f"docs_{page}"}
  name = _file(page).relative_to(REPO)
  for i, code in enumerate(blocks(page)):
    try:
      exec(compile(code, f"{name} block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-exception-caught
      sys.exit(f"{name} block {i + 1} failed: {e!r}\n{code}")


# A path into the repository as the text names it: jaxae/loop.py, docs/speed.md, experiments/
# configs/fast.py, tests/; a glob (experiments/configs/*.py) names the files it matches.
PATH = re.compile(r"(?<![\w./-])((?:jaxae|experiments|docs|tests|results)/[\w./*-]*)")
TEXTS = ["README.md", "RESULTS.md", "docs/*.md", "jaxae/**/*.py", "experiments/**/*.py",
         "experiments/*.ipynb", ".ci/run", "pyproject.toml"]


def named_paths(text: str) -> set[str]:
  return {m.rstrip(".,:;)'`") for m in PATH.findall(text)}


def test_every_path_the_texts_name_exists():
  missing = []
  for pattern in TEXTS:
    for file in sorted(REPO.glob(pattern)):
      for path in named_paths(file.read_text()):
        if not (REPO / path).exists() and not list(REPO.glob(path)):
          missing.append(f"{file.relative_to(REPO)}: {path}")
  assert not missing, "\n".join(missing)


# A section of RESULTS.md named in the text: RESULTS.md, "Speed" or RESULTS.md ("Speed", "Time to
# quality"): a heading that starts with it.
SECTION = re.compile(r'RESULTS\.md\)?,? \(?((?:"[^"]+",? ?)+)')


def test_every_section_of_results_the_texts_name_exists():
  headings = [line.lstrip("#").strip() for line in (REPO / "RESULTS.md").read_text().splitlines()
              if line.startswith("#")]
  missing = []
  for pattern in TEXTS:
    for file in sorted(REPO.glob(pattern)):
      for names in SECTION.findall(" ".join(file.read_text().split())):
        for name in re.findall(r'"([^"]+)"', names):
          if not any(h.startswith(name) for h in headings):
            missing.append(f"{file.relative_to(REPO)}: RESULTS.md, {name!r}")
  assert not missing, "\n".join(missing)


def test_a_stale_path_is_caught():
  assert named_paths("see jaxae/tasks.py, (docs/speed.md) and experiments/configs/*.py.") == {
      "jaxae/tasks.py", "docs/speed.md", "experiments/configs/*.py"}
  assert not (REPO / "jaxae/tasks.py").exists()  # So the test above would name it.
  assert SECTION.findall('(RESULTS.md, "Many seeds") and RESULTS.md ("Speed", "Time to q")') == [
      '"Many seeds"', '"Speed", "Time to q"']


def test_a_page_s_blocks_are_found():
  assert len(blocks("library.md")) >= 9


def test_the_results_report_s_code_runs_and_matches_the_runs_files():
  assert blocks("RESULTS.md")
  proc = subprocess.run([sys.executable, __file__, "RESULTS.md"], capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "corrected_5seeds: 40.62 ± 0.55 dB [39.73, 41.17]" in proc.stdout


def test_the_results_report_is_a_report():
  text = (REPO / "RESULTS.md").read_text()
  assert len(text.splitlines()) <= 300
  # About what was found, not about who measured it or with which tool.
  assert not re.search(r"\b(I|session|sessions|status)\b", text)


@pytest.mark.parametrize("command", [["tensorboard", "--version_tb"],
                                     ["jupyter", "notebook", "--version"]])
def test_the_viewers_the_docs_open_are_installed(command):
  """docs/running.md opens TensorBoard, the notebook Jupyter; before the `view` extra, the
  README's install line gave neither command."""
  executable = pathlib.Path(sys.executable).parent / command[0]
  run = subprocess.run([str(executable), *command[1:]], capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 0 and re.search(r"\d+\.\d+", run.stdout + run.stderr), run.stderr


@pytest.mark.slow
def test_jaxae_in_your_own_jax_code_runs_as_written():
  # The page's code is under test here, not its numbers (the other tests check those, compiled
  # as users compile them). So it runs in a process of its own, whose XLA compiles with most
  # optimizations off: the page took 25 s of CPU rather than 45 s, its dozen programs of the
  # original model running a few steps each.
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  proc = subprocess.run([sys.executable, __file__, "library.md"], capture_output=True, text=True,
                        timeout=600, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "bfloat16" in proc.stdout


if __name__ == "__main__":
  run_page(sys.argv[1])

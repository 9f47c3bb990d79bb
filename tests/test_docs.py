"""The docs tell the truth: their code runs as written (docs/library.md), and every path they,
the package and the scripts name exists.

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


def blocks(page: str) -> list[str]:
  return BLOCK.findall((REPO / "docs" / page).read_text())


def run_page(page: str) -> None:
  """Executes the page's Python blocks in order in one namespace, from the repository's root (the
  page's paths are the repository's); exits naming the block that failed."""
  os.chdir(REPO)
  namespace = {"__name__": f"docs_{page}"}
  for i, code in enumerate(blocks(page)):
    try:
      exec(compile(code, f"docs/{page} block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-exception-caught
      sys.exit(f"docs/{page} block {i + 1} failed: {e!r}\n{code}")


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


def test_a_stale_path_is_caught():
  assert named_paths("see jaxae/tasks.py, (docs/speed.md) and experiments/configs/*.py.") == {
      "jaxae/tasks.py", "docs/speed.md", "experiments/configs/*.py"}
  assert not (REPO / "jaxae/tasks.py").exists()  # So the test above would name it.


def test_a_page_s_blocks_are_found():
  assert len(blocks("library.md")) >= 9


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

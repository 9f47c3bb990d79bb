"""The code of the docs' pages runs as written (docs/library.md)."""

import re

import pytest

from conftest import REPO

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: str) -> list[str]:
  return BLOCK.findall((REPO / "docs" / page).read_text())


def test_a_page_s_blocks_are_found():
  assert len(blocks("library.md")) >= 9


@pytest.mark.slow
def test_jaxae_in_your_own_jax_code_runs_as_written(monkeypatch, capsys):
  monkeypatch.chdir(REPO)  # The page's paths are the repository's.
  namespace = {"__name__": "docs_library"}
  for i, code in enumerate(blocks("library.md")):
    try:
      exec(compile(code, f"docs/library.md block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:
      raise AssertionError(f"docs/library.md block {i + 1} failed: {e!r}\n{code}") from e
  assert "bfloat16" in capsys.readouterr().out

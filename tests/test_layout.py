"""The package's shape (docs/design.md's rules, read off the source): short functions, and
imports that flow one way: the config knows nothing of the package, the core nothing of the run
machinery and reporting above it."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
ABOVE_THE_CORE = ("jaxae.run", "jaxae.report")


def _modules():
  for path in sorted((REPO / "jaxae").rglob("*.py")):
    yield path.relative_to(REPO), ast.parse(path.read_text())


def _imports(tree) -> set[str]:
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
  return {n for n in names if n == "jaxae" or n.startswith("jaxae.")}


def test_no_function_is_longer_than_60_lines():
  long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
          for path, tree in _modules() for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > 60]
  assert not long, long


def test_imports_flow_one_way():
  wrong = []
  for path, tree in _modules():
    imported = _imports(tree)
    if path.name == "config.py" and imported:
      wrong.append(f"{path} imports {sorted(imported)}")
    if path.parts[1] not in ("run", "report"):
      wrong += [f"{path} imports {name}" for name in sorted(imported)
                if name.startswith(ABOVE_THE_CORE)]
  assert not wrong, wrong

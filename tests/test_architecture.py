"""The layering of the package: the import-linter contract holds, and would fail on
an upward import or a cycle; no import is hidden in a function to dodge one."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "vibe_jax"
# Third-party modules imported inside functions on purpose (slow to import and
# needed by few runs); each such import carries a comment saying so.
LAZY = {"sklearn", "tensorflow_datasets", "igraph", "leidenalg", "matplotlib", "torch",
        "diffusers", "scipy", "ott"}


def _lint(cwd: pathlib.Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(cwd))
  lint = pathlib.Path(sys.executable).with_name("lint-imports")
  return subprocess.run([str(lint), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_the_import_contract_holds():
  out = _lint(ROOT)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "4 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module,line,broken", [
    # An upward import: a model importing the experiment runner.
    ("models/cnn.py", "from vibe_jax import experiment", "Layers"),
    # A cycle inside one layer: sources importing load, which imports sources.
    ("data/sources.py", "from vibe_jax.data import load", "cycles"),
    # One defense importing another.
    ("defenses/vibe/defense.py", "from vibe_jax.defenses.none import defense as _d",
     "Defenses do not import each other"),
])
def test_the_contract_fails_on_a_bad_import(tmp_path, module, line, broken):
  shutil.copytree(PACKAGE, tmp_path / "vibe_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
  path = tmp_path / "vibe_jax" / module
  path.write_text(path.read_text() + f"\n{line}\n")
  out = _lint(tmp_path)
  assert out.returncode != 0
  assert f"{broken}" in out.stdout and "BROKEN" in out.stdout


def _function_imports(path: pathlib.Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for sub in ast.walk(node):
        if isinstance(sub, ast.ImportFrom):
          yield sub.lineno, sub.module or ""
        elif isinstance(sub, ast.Import):
          yield from ((sub.lineno, a.name) for a in sub.names)


def test_no_import_hides_in_a_function_and_no_sys_path_edits():
  hidden, syspath = [], []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(ROOT)
    for line, module in _function_imports(path):
      if module.split(".")[0] not in LAZY:
        hidden.append(f"{rel}:{line} imports {module}")
    if "sys.path" in path.read_text():
      syspath.append(str(rel))
  assert not hidden, hidden
  assert not syspath, syspath

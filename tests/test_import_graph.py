"""The package's import graph: no cycles inside `mri_jax`, and inference never reaches training."""

import ast
from pathlib import Path

import mri_jax

PACKAGE = Path(mri_jax.__file__).resolve().parent


def _module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(with_parents: bool) -> dict[str, set[str]]:
  """module → the mri_jax modules it imports (function-level imports too). `from pkg import mod`
  counts as importing `pkg.mod`; with `with_parents`, importing `a.b.c` also counts `a.b` (whose
  __init__ Python runs first)."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for a in node.names:
          sub = f"{node.module}.{a.name}"
          deps.add(sub if sub in modules else node.module)
    deps = {d for d in deps if d in modules and d != name}
    if with_parents:
      deps |= {".".join(d.split(".")[:i]) for d in deps for i in range(1, d.count(".") + 1)} - {name}
    graph[name] = deps
  return graph


def _reachable(graph, start) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for d in graph.get(todo.pop(), ()):
      if d not in seen:
        seen.add(d)
        todo.append(d)
  return seen


def test_no_import_cycles():
  graph = _graph(with_parents=False)
  cycles = sorted(m for m in graph if m in _reachable(graph, m))
  assert not cycles, f"import cycles through {cycles}"


def test_inference_never_reaches_training():
  graph = _graph(with_parents=True)
  assert "mri_jax.train.trainer" in _reachable(graph, "mri_jax.cli")  # the check sees function-level imports
  for entry in ("mri_jax.restore", "mri_jax.models.restorer", "mri_jax.checkpoints", "mri_jax.evaluate",
                "mri_jax.demo"):
    reached = _reachable(graph, entry)
    assert not any(m == "mri_jax.train" or m.startswith("mri_jax.train.") for m in reached), (entry, sorted(reached))

"""The package's folders are its layers, and imports point one way: kernels and validation at the bottom, then
the Hydra (model/) and the data readers (data/), the training machinery, the methods, and the entry points on
top. No module imports another's private names, and no module-level imports form a circle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Each layer may import its own and the lower ones; the applications (labelling/, demo/) and the top-level
# modules (align, the CLI, the planner, plots) sit together on top.
LAYERS = {
    "kernels": 0,
    "validation": 0,
    "model": 1,
    "data": 1,
    "training": 2,
    "methods": 3,
}
TOP = 4


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "lorarlhf").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((REPO / "kernels").glob("*.py")):
        name = "lorarlhf.kernels" + ("" if path.stem == "__init__" else f".{path.stem}")
        found[name] = path
    return found


def _layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.get(part, TOP)


def _imports(path: Path, *, module_level_only: bool = False):
    """(module, names, line) of each absolute import of lorarlhf in the file."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lorarlhf"):
            yield node.module, [alias.name for alias in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lorarlhf"):
                    yield alias.name, [], node.lineno


def test_imports_point_down_the_layers():
    upward = []
    for module, path in _modules().items():
        for target, names, line in _imports(path):
            for imported in [target] + [f"{target}.{name}" for name in names]:
                if imported in _modules() and _layer(imported) > _layer(module):
                    upward.append(f"{path.relative_to(REPO)}:{line}: {module} (layer {_layer(module)}) imports "
                                  f"{imported} (layer {_layer(imported)})")  # fmt: skip
                    break
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    private = []
    for module, path in _modules().items():
        for target, names, line in _imports(path):
            hidden = [name for name in names if name.startswith("_") and name != "__version__"]
            hidden_module = any(part.startswith("_") and part != "__init__" for part in target.split(".")[1:])
            if hidden or (hidden_module and not module.startswith(target.rsplit(".", 1)[0])):
                private.append(f"{path.relative_to(REPO)}:{line}: from {target} import {', '.join(names)}")
    assert not private, "\n".join(private)


def test_module_level_imports_form_no_circle():
    modules = _modules()
    graph = {
        module: {target for target, _, _ in _imports(path, module_level_only=True) if target in modules}
        for module, path in modules.items()
    }

    def circle_from(start: str, node: str, seen: tuple[str, ...]):
        for target in graph[node]:
            if target == start:
                return (*seen, target)
            if target not in seen:
                found = circle_from(start, target, (*seen, target))
                if found:
                    return found
        return None

    for module in graph:
        circle = circle_from(module, module, (module,))
        assert circle is None, " -> ".join(circle)


def test_the_table_names_every_method_module_and_each_entry_resolves():
    from lorarlhf.methods.table import DATA_KINDS, METHODS

    trainers = {Path(method.trainer_path.split(":")[0].replace(".", "/")).name for method in METHODS.values()}
    modules = {path.stem for path in (REPO / "lorarlhf" / "methods").glob("*.py")}
    assert modules - trainers == {"__init__", "table", "rl_options"}, "a method module with no entry in the table"
    for name, method in METHODS.items():
        assert method.name == name and method.data in DATA_KINDS
        assert callable(method.trainer) and hasattr(method.config, "from_overrides")

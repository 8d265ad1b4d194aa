"""The package's layout stays layered: imports go one way, nothing imports the command line,
and argument parsing lives in the command-line layer only.

Read from the source with ``ast`` (nothing is imported), counting module-level and
function-level imports alike. Imports under ``if TYPE_CHECKING:`` are annotations only: they do
not count for the layers, but they do for cycles (a cycle of annotations is still two modules
that each need the other to be read).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = "csla_core"
# Each layer may import from itself and the layers before it, never from a later one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "imaging", "runtime"),
    ("models", "weights", "faces"),
    ("editing",),
    ("pipeline",),
    ("loading",),
    ("training", "evaluation", "service"),
    ("cli", "__main__"),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO_ROOT / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(
    tree: ast.AST, module: str, is_package: bool, type_checking: bool = False
) -> set[str]:
    """Every dotted name an import statement anywhere in ``tree`` asks for (``from a import b``
    gives ``a.b``, whether ``b`` is a module or a name in ``a``); those under ``if
    TYPE_CHECKING:`` only with ``type_checking``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                for stmt in child.orelse:
                    visit_stmt(stmt)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.update(f"{source}.{alias.name}" for alias in node.names)
        visit(node)

    visit(tree)
    return found


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a submodule import also runs its parents'
    ``__init__``, so those count too; the top-level ``csla_core`` is the façade, see below);
    ``type_checking``: annotation-only imports included."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps: set[str] = set()
        for target in _imported_names(tree, name, path.name == "__init__.py", type_checking):
            parts = target.split(".")
            for end in range(2, len(parts) + 1):  # csla_core.faces, csla_core.faces.align, ...
                prefix = ".".join(parts[:end])
                # A module's own packages are already being imported when it runs.
                if prefix in modules and not name.startswith(prefix + "."):
                    deps.add(prefix)
            # `import csla_core` or `from csla_core import load_pipeline`: the façade itself.
            if target == PACKAGE or (
                parts[0] == PACKAGE and len(parts) == 2 and target not in modules
            ):
                deps.add(PACKAGE)
        deps.discard(name)
        graph[name] = deps
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1]
    for index, members in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{module} is in no layer: add {top!r} to LAYERS in {__file__}")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_import_graph_has_no_cycle_not_even_through_annotations():
    graph = import_graph(type_checking=True)
    assert len(graph) > 20  # the walk found the package
    cycle = _cycle({k: v for k, v in graph.items() if k != PACKAGE})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_one_way_through_the_layers():
    wrong = [
        f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})"
        for module, deps in import_graph().items()
        if module != PACKAGE
        for dep in sorted(deps)
        if dep != PACKAGE and _layer(dep) > _layer(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_command_line_or_the_package_facade():
    graph = import_graph()
    for module, deps in graph.items():
        if module not in (PACKAGE, f"{PACKAGE}.__main__") and not module.startswith(
            f"{PACKAGE}.cli"
        ):
            assert f"{PACKAGE}.cli" not in deps, f"{module} imports the command line"
        if module != PACKAGE:
            # The top-level package re-exports the API; inside it, import the module itself.
            assert PACKAGE not in deps, f"{module} imports the top-level {PACKAGE} package"
    app_files = [REPO_ROOT / "app.py", *sorted((REPO_ROOT / "csla_app").rglob("*.py"))]
    for path in (p for p in app_files if p.is_file()):
        names = _imported_names(ast.parse(path.read_text()), "csla_app", False)
        assert not any(n == f"{PACKAGE}.cli" or n.startswith(f"{PACKAGE}.cli.") for n in names), (
            f"{path.name} imports the command line"
        )


def test_argument_parsing_only_in_the_command_line_layer():
    parsers = [
        module
        for module, path in _modules().items()
        if not module.startswith(f"{PACKAGE}.cli")
        and any(
            name == "argparse" or name.startswith("argparse.")
            for name in _imported_names(ast.parse(path.read_text()), module, False)
        )
    ]
    assert not parsers, f"argparse outside csla_core/cli: {parsers}"

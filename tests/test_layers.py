"""The package's layers: the core never imports tooling or apps, and no module imports itself back."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tailedcore"
# A layer may import its own modules and those of the layers listed after it.
ALLOWED = {"core": {"core"}, "report": {"report", "core"}, "bench": {"bench", "report", "core"},
           "app": {"app", "bench", "report", "core"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    head = module.split(".")[0]
    if head == "__main__":  # ``python -m tailedcore`` runs the command line
        return "app"
    return head if head in ("report", "bench", "app") else "core"


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in the file, lazy imports included)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
                targets |= {f"{stem}.{alias.name}".strip(".") if not node.module else stem for alias in node.names}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                for full in [module] if module else [alias.name for alias in node.names]:
                    if full and full.split(".")[0] == "tailedcore":
                        targets.add(".".join(full.split(".")[1:]))
        graph[name] = {t for t in targets if t and (PACKAGE / (t.replace(".", "/") + ".py")).is_file()}
    return graph


def test_core_never_imports_tooling_or_apps():
    wrong = sorted(f"{module} -> {target}" for module, targets in _imports().items() for target in targets
                   if _layer(target) not in ALLOWED[_layer(module)])
    assert not wrong


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_the_graph_sees_imports():
    graph = _imports()
    reached = graph["bench.benchmark"] | graph["methods"] | graph["detector"]
    assert {"methods", "detector", "policies", "features"} <= reached
    assert "report.writers" in graph["app.commands"] and "bench.nlt" in graph["app.commands"]  # lazy imports count


def test_the_readme_names_every_module():
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    section = readme[readme.index("## How it is built"):]
    missing = sorted(path.stem for path in PACKAGE.rglob("*.py")
                     if not path.stem.startswith("__") and f"`{path.stem}`" not in section)
    assert not missing

"""The package's layers: no import cycle, and no import from a lower layer to a higher one."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "edmips"
# Lowest first; a package may import its own modules and those of lower layers only.
LAYERS = [
    {"quant"},
    {"nn"},
    {"cost", "models", "data"},
    {"records"},
    {"core"},
    {"search", "retrain", "ptq"},
    {"export", "report"},
    {"programs"},
]
RANK = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every edmips module and the edmips modules it imports (anywhere in its body)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    found = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from package import module` imports the module
                    submodule = f"{node.module}.{alias.name}"
                    deps.add(submodule if submodule in paths else node.module)
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
        found[name] = {d for d in deps if d in paths and d != name}
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else None


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK)


def test_no_import_goes_up_or_sideways():
    wrong = []
    for module, deps in imports().items():
        here = package_of(module)
        for dep in deps:
            there = package_of(dep)
            if here and there and here != there and RANK[there] >= RANK[here]:
                wrong.append(f"{module} -> {dep}")
    assert not wrong


def test_no_import_cycle():
    graph = imports()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle.extend(path[path.index(d) :] if d in path else [*path, d])
                return True
            if d not in state and visit(d, [*path, d]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)

"""The import graph runs one way: entry points -> training -> eval -> sampling -> model/diffusion/encoders ->
parallel. A new import against that direction, or a new cycle between modules, fails here with the import named."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "stiv_jax")

# Top to bottom: a module may import its own package and the packages of LATER layers, never earlier ones.
# ``entry`` is the modules directly under stiv_jax/ (train, sample, export, compile, summary).
LAYERS = (
    ("entry",),
    ("training", "stages"),
    ("eval",),
    ("sampling",),
    ("checkpointing", "data"),
    ("model", "diffusion", "encoders"),
    ("parallel", "launch"),
)
# Known imports against the direction, each with the reason it stays for now. The test also fails when one of
# these disappears, so the list only shrinks.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package modules that ``path`` imports (at any depth of the file: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules and name != "stiv_jax"}
    return found


def _layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    package = parts[1] if len(parts) > 2 or os.path.isdir(os.path.join(PACKAGE, parts[-1])) else "entry"
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index, package
    raise AssertionError(f"{module}: package {package!r} is in no layer of LAYERS; add it where it belongs")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """``(module, imported)`` pairs where a module imports a package of an earlier layer (same layer is fine;
    cycles are caught by the cycle test)."""
    upward = set()
    for module, imported in graph.items():
        layer, package = _layer_of(module)
        for target in imported:
            target_layer, target_package = _layer_of(target)
            if target_package != package and target_layer < layer:
                upward.add((module, target))
    return upward


def test_imports_run_from_entry_points_down_to_parallel(graph):
    upward = upward_imports(graph)
    unexpected = sorted(upward - set(KNOWN_UPWARD))
    assert not unexpected, "imports against the layer order (see LAYERS):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in unexpected)
    gone = sorted(set(KNOWN_UPWARD) - upward)
    assert not gone, f"fixed, so remove from KNOWN_UPWARD: {gone}"


def test_no_import_cycle_between_modules(graph):
    """Tarjan's strongly connected components over modules: any component of more than one module is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import():
    """The layer check can fail: sampling importing training is against the order, the reverse is not."""
    assert upward_imports({"stiv_jax.sampling.run": {"stiv_jax.training.step"}}) == {
        ("stiv_jax.sampling.run", "stiv_jax.training.step")}
    assert upward_imports({"stiv_jax.training.step": {"stiv_jax.sampling.run", "stiv_jax.parallel.mesh"}}) == set()
    assert _layer_of("stiv_jax.train") == (0, "entry") and _layer_of("stiv_jax.data")[1] == "data"

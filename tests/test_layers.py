"""Layering: no module of dmask imports from a layer above its own.

Every import is read from the source with :mod:`ast`: at module level, inside
functions, under ``TYPE_CHECKING``, and ``import_module("dmask...")`` calls.
``python tests/test_layers.py`` prints the imports between layers.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "dmask"

#: Layers from bottom to top. A module may import its own layer and those of
#: lower tiers; the layers of one tier do not import each other. ``dmask`` is
#: the package's ``__init__`` (the public API, which loads ``model`` lazily).
TIERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("options",),  # dask.config only inside functions
    ("core",),  # numpy, numba and scipy; no dask, distributed, zarr or xarray
    ("io",),
    ("graph",),
    ("checks",),  # a fit's checks before any work: below the model that runs them
    ("datasets", "model"),
    ("statistics", "estimator"),  # on model: sums kept and solved; scikit-learn
    ("interop", "apply", "evaluation", "report", "dmask"),
    ("cluster",),
    ("cli",),
    ("__main__",),
)
TIER = {layer: tier for tier, layers in enumerate(TIERS) for layer in layers}

#: Modules known to break the order, with the reason (strict xfail): none today.
KNOWN_VIOLATIONS: dict[str, str] = {}

#: The only third-party libraries core may import, anywhere in a module.
CORE_LIBRARIES = {"numpy", "numba", "llvmlite", "scipy"}
#: Never in core, at module level or inside a function.
NOT_IN_CORE = {"dask", "distributed", "zarr", "xarray"}
#: What ``import dmask`` must not load (it is cheap; fit and Model load them).
HEAVY = ("dask", "numpy", "xarray", "distributed", "zarr")


@dataclass(frozen=True)
class Import:
    """One imported module, as a module name, and where."""

    module: str
    line: int
    module_level: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_dmask_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(name: str) -> str:
    """``dmask.graph.runtime`` -> ``graph``; ``dmask`` -> ``dmask``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


MODULES = {
    module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if "__pycache__" not in path.parts
}


def _resolve(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str) -> list[Import]:
    """Every module ``name`` imports (for ``from m import x``: ``m.x`` if a module)."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(
                Import(a.name, node.lineno, not in_function) for a in node.names
            )
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, name, is_package)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                is_module = base.startswith("dmask") and is_dmask_module(full)
                target = full if is_module else base
                found.append(Import(target, node.lineno, not in_function))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and getattr(node.func, "id", getattr(node.func, "attr", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(node.args[0].value, node.lineno, not in_function))
        nested = in_function or isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        )
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def dmask_imports(name: str) -> Iterator[Import]:
    for imp in imports_of(name):
        if imp.module == "dmask" or imp.module.startswith("dmask."):
            yield imp


def third_party(name: str) -> set[str]:
    tops = {imp.module.split(".")[0] for imp in imports_of(name)}
    return tops - set(sys.stdlib_module_names) - {"dmask", "__future__"}


def _where(name: str, imp: Import) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{imp.line} imports {imp.module}"


def test_every_module_has_a_layer():
    unplaced = sorted(n for n in MODULES if layer_of(n) not in TIER)
    assert not unplaced, f"add these to TIERS: {unplaced}"
    assert {layer_of(n) for n in MODULES} == set(TIER), "a layer in TIERS has no code"


def _layer_cases() -> list:
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_VIOLATIONS[name])]
            if name in KNOWN_VIOLATIONS
            else [],
        )
        for name in MODULES
    ]


@pytest.mark.parametrize("name", _layer_cases())
def test_no_import_from_a_higher_layer(name):
    layer = layer_of(name)
    bad = {
        _where(name, imp): None
        for imp in dmask_imports(name)
        if layer_of(imp.module) != layer and TIER[layer_of(imp.module)] >= TIER[layer]
    }
    assert not bad, f"{layer} (tier {TIER[layer]}) reaches up or sideways: {list(bad)}"


@pytest.mark.parametrize("name", [n for n in MODULES if layer_of(n) == "core"])
def test_core_imports_only_the_numerical_libraries(name):
    for imp in imports_of(name):
        assert imp.module.split(".")[0] not in NOT_IN_CORE, _where(name, imp)
    others = third_party(name) - CORE_LIBRARIES
    assert not others, f"{name} imports {sorted(others)}"


#: Libraries only the tests use (OpenCV: the reference's resize and display).
TEST_ONLY = {"cv2"}


def test_no_module_imports_a_test_only_library():
    found = [
        _where(name, imp)
        for name in MODULES
        for imp in imports_of(name)
        if imp.module.split(".")[0] in TEST_ONLY
    ]
    assert not found, found


@pytest.mark.parametrize("name", ["dmask.errors", "dmask.options"])
def test_errors_and_options_import_the_standard_library_at_load(name):
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    for imp in imports_of(name):
        if imp.module_level:
            ok = imp.module.split(".")[0] in allowed or imp.module == "dmask.errors"
            assert ok, _where(name, imp)


def test_import_dmask_loads_no_numerical_stack():
    code = (
        "import json, sys\n"
        "import dmask\n"
        "dmask.set_options, dmask.InputError, dmask.__version__\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert json.loads(out.stdout) == []


def layer_graph() -> dict[tuple[str, str], list[str]]:
    """``(from_layer, to_layer)`` -> where, for imports between layers."""
    edges: dict[tuple[str, str], list[str]] = {}
    for name in MODULES:
        for imp in dmask_imports(name):
            pair = (layer_of(name), layer_of(imp.module))
            if pair[0] != pair[1]:
                edges.setdefault(pair, []).append(_where(name, imp))
    return edges


if __name__ == "__main__":
    for (src, dst), where in sorted(layer_graph().items()):
        print(f"{src:>10} -> {dst:<10} {len(where):3}  e.g. {where[0]}")

"""The layout's rules, read from the code's imports (AST), so a change that breaks them fails here.

- ``rewards/`` imports no torch, Ray, ``cluster`` or ``actors``;
- ``cluster/algo/``, the config, the errors and the payloads import no Ray;
- only ``cluster/runtime/`` imports ``actors``; ``actors/`` never imports ``cluster/stages``;
- no import cycle between packages.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for top in ("cluster", "actors", "rewards") for p in (ROOT / top).rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module the file imports, at any depth (a lazy import inside a function counts); ``from a import b``
    counts as ``a.b`` too, in case ``b`` is a module, and relative imports are resolved."""
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


IMPORTS = {_module(p): _imports(p) for p in SOURCES}


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(owners: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in IMPORTS.items()
        if _under(module, *owners)
        for name in names
        if _under(name, *forbidden)
    ]


@pytest.mark.parametrize(
    ("owners", "forbidden"),
    [
        (("rewards",), ("torch", "ray", "cluster", "actors", "vllm")),
        (
            ("cluster.algo", "cluster.config", "cluster.sections", "cluster.errors", "cluster.payloads"),
            ("ray", "actors", "vllm"),
        ),
        (("actors",), ("cluster.stages", "cluster.runtime")),
        (("cluster.algo",), ("cluster.stages", "cluster.runtime", "cluster.data")),
    ],
    ids=["rewards-pure", "no-ray-in-algo-config-payloads", "actors-below-stages", "algo-is-a-leaf"],
)
def test_layer_rule(owners, forbidden):
    assert _violations(owners, forbidden) == []


def test_algo_imports_only_the_standard_library_numpy_and_torch():
    allowed = ("numpy", "torch", "cluster.algo", "__future__")
    outside = [
        f"{module} imports {name}"
        for module, names in IMPORTS.items()
        if _under(module, "cluster.algo")
        for name in names
        if not _under(name, *allowed) and name.split(".")[0] not in sys.stdlib_module_names
    ]
    assert outside == []


def test_data_touches_no_ray_and_no_actors():
    assert _violations(("cluster.data",), ("ray", "actors", "cluster.runtime", "cluster.stages")) == []


def test_only_runtime_imports_actors():
    outside = [v for v in _violations(("cluster",), ("actors",)) if not v.startswith("cluster.runtime")]
    assert outside == []


def _package(module: str) -> str:
    """``cluster.stages.rl`` -> ``cluster.stages``; ``cluster.config`` stays itself; ``actors.x`` -> ``actors``."""
    parts = module.split(".")
    return parts[0] if parts[0] in ("actors", "rewards") else ".".join(parts[:2])


def _package_edges(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, names in imports.items():
        for name in names:
            if _under(name, "cluster", "actors", "rewards") and _package(module) != _package(name):
                edges.setdefault(_package(module), set()).add(_package(name))
    return edges


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    def walk(node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                return [*path[path.index(nxt) :], nxt]
            found = walk(nxt, [*path, nxt])
            if found:
                return found
        return None

    for start in sorted(edges):
        found = walk(start, [start])
        if found:
            return found
    return None


def test_no_package_level_import_cycle():
    cycle = _find_cycle(_package_edges(IMPORTS))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_rules_see_the_code():
    """Guard against a vacuous pass: the scanner finds the imports it is meant to police."""
    assert "actors.learner" in IMPORTS["cluster.runtime.fleet"]
    assert "cluster.algo.objective" in IMPORTS["actors.learner"]
    assert len(IMPORTS) > 30
    with_cycle = IMPORTS | {"actors.rollout": IMPORTS["actors.rollout"] | {"cluster.runtime.fleet"}}
    assert _find_cycle(_package_edges(with_cycle)) is not None

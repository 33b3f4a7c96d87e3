"""The import layers (docs/design.md, "Layers"): every import between omnifast's modules points
down the table below, never up, and never sideways except where the table says so.

Every module of ``omnifast/`` and ``kernels/`` (installed as ``omnifast.kernels``) is parsed with
``ast``: top-level imports, imports inside functions, ``from omnifast import name`` (a submodule
or the package itself) and ``importlib.import_module("omnifast...")`` with a literal name. A
new module must be placed in the table, or this test fails.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: top to bottom: (layer, {component: module prefixes}). A component is a module or a package
#: (a prefix matches itself and everything below it).
LAYERS: list[tuple[str, dict[str, tuple[str, ...]]]] = [
    ("user-facing", {
        "omnifast": ("omnifast", "omnifast.__main__"),  # the package's public names
        "api": ("omnifast.api",), "cli": ("omnifast.cli",), "many": ("omnifast.many",),
        "demo": ("omnifast.demo",), "eval": ("omnifast.eval",), "viz": ("omnifast.viz",),
    }),
    ("stages", {"train": ("omnifast.train",), "track": ("omnifast.track",),
                "refine": ("omnifast.refine",)}),
    ("model", {"model": ("omnifast.model",)}),
    ("ops", {"ops": ("omnifast.ops",)}),
    ("dispatch", {"dispatch": ("omnifast.dispatch",), "runtime": ("omnifast.runtime",)}),
    ("kernels", {
        "reference": ("omnifast.reference",), "kernels": ("omnifast.kernels",),
        "csrc": ("omnifast._ext", "omnifast._C", "omnifast._build_config"),
        # clips in, motion out: video reading, optical flow, synthetic clips. No model, no ops.
        "data": ("omnifast.data", "omnifast.datasets"),
    }),
    ("utilities", {
        "config": ("omnifast.config",), "cpuinfo": ("omnifast.cpuinfo",),
        "precision": ("omnifast.precision",), "pixels": ("omnifast.pixels",),
        "queries": ("omnifast.queries",), "files": ("omnifast.files",),
        "interrupt": ("omnifast.interrupt",),
    }),
]

#: layers whose components may import each other (the user-facing layer composes the rest)
OPEN_LAYERS = {"user-facing"}

#: sideways edges allowed between components of one closed layer, with the reason
SIDEWAYS = {
    ("track", "refine"): "Tracker.track_refined and template_weights run the refinement stage",
}

#: the only third-party packages the utilities layer may import (besides the standard library)
UTILITY_THIRD_PARTY = {"numpy", "torch", "cv2"}  # cv2: pixels' fast sampler, on demand

_RANK = {layer: i for i, (layer, _) in enumerate(LAYERS)}  # 0 = top


def module_files() -> dict[str, Path]:
    """{module name: file} of every module in ``omnifast/`` and ``kernels/``."""
    out = {}
    for base, package in ((ROOT / "omnifast", "omnifast"), (ROOT / "kernels", "omnifast.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def place(module: str) -> tuple[str, str] | None:
    """(layer, component) of a module, by its longest matching prefix; None if unplaced."""
    best = None
    for layer, components in LAYERS:
        for component, prefixes in components.items():
            for prefix in prefixes:
                exact_only = prefix == "omnifast"  # the package itself, not all below it
                if module == prefix or (not exact_only and module.startswith(prefix + ".")):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), layer, component)
    return None if best is None else best[1:]


def imports(source: str, module: str, known: set[str], is_package: bool = False
            ) -> list[tuple[int, str]]:
    """(line, imported omnifast module) of every import in ``source``, wherever it is."""
    out = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in known else base))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            out.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in out
            if name == "omnifast" or name.startswith("omnifast.")]


def violations(module: str, source: str, known: set[str], is_package: bool = False
               ) -> list[str]:
    """Every import of ``module`` that points up, or sideways where that is not allowed."""
    here = place(module)
    if here is None:
        return [f"{module} is in no layer of tests/test_layers.py: place it in LAYERS"]
    out = []
    for line, target in imports(source, module, known, is_package):
        there = place(target)
        if there is None:
            out.append(f"{module}:{line} imports {target}, which is in no layer")
            continue
        if there[1] == here[1] or _RANK[there[0]] > _RANK[here[0]]:
            continue  # inside its own component, or down
        if there[0] == here[0] and (here[0] in OPEN_LAYERS or (here[1], there[1]) in SIDEWAYS):
            continue
        way = "up" if _RANK[there[0]] < _RANK[here[0]] else "sideways"
        out.append(f"{module}:{line} imports {target}: {way} from {here[0]}/{here[1]} to "
                   f"{there[0]}/{there[1]}")
    return out


def third_party(source: str) -> set[str]:
    """Top-level names of the non-omnifast packages a module imports (standard library out)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n != "omnifast" and n != "__future__"
            and n not in sys.stdlib_module_names}


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    found = module_files()
    assert "omnifast.track" in found and "omnifast.kernels.composite" in found, sorted(found)
    return found


def test_no_import_points_up(modules):
    known = set(modules) | {"omnifast._C"}
    bad = []
    for name, path in modules.items():
        bad += violations(name, path.read_text(), known, path.name == "__init__.py")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_utilities_import_only_core_dependencies_and_the_standard_library(modules):
    for name, path in modules.items():
        if place(name)[0] == "utilities":
            extra = third_party(path.read_text()) - UTILITY_THIRD_PARTY
            assert not extra, f"{name} imports {sorted(extra)}"


# ------------------------------------------------------------------ the checker itself
KNOWN = {"omnifast", "omnifast.ops", "omnifast.ops.composite", "omnifast.train",
         "omnifast.train.trainer", "omnifast.track", "omnifast.dispatch",
         "omnifast.kernels", "omnifast.kernels._env", "omnifast.refine",
         "omnifast.reference", "omnifast.reference.linear", "omnifast.precision"}


@pytest.mark.parametrize("module, source", [
    ("omnifast.ops.fake", "from omnifast.train.trainer import Trainer\n"),
    ("omnifast.kernels.fake", "def f():\n    from omnifast.dispatch import resolve\n"),
    ("omnifast.reference.fake", "import omnifast.ops.composite\n"),
    ("omnifast.reference.fake", "from omnifast import backend\n"),  # the package's names
    ("omnifast.reference.fake", "from .. import ops\n"),
    ("omnifast.model.fake", "import importlib\nm = importlib.import_module('omnifast.track')\n"),
    ("omnifast.train.fake", "from omnifast.track import Tracker\n"),  # sideways
    ("omnifast.precision", "from omnifast.reference.linear import linear\n"),
])
def test_the_checker_flags_an_import_against_the_layers(module, source):
    found = violations(module, source, KNOWN)
    assert len(found) == 1 and ("up from" in found[0] or "sideways from" in found[0]), found


@pytest.mark.parametrize("module, source", [
    ("omnifast.ops.fake", "from omnifast.dispatch import resolve\nfrom omnifast import ops\n"),
    ("omnifast.kernels.fake", "from omnifast.kernels._env import triton_interpret\n"),
    ("omnifast.reference.fake", "from omnifast.precision import get_matmul_precision\n"),
    ("omnifast.track", "def f():\n    from omnifast.refine import refine_tracks\n"),
    ("omnifast.cli", "from omnifast.api import fit\nfrom omnifast.eval import run\n"),
    ("omnifast.api", "import torch\nfrom omnifast.track import Tracker\n"),
])
def test_the_checker_passes_imports_down_or_allowed(module, source):
    assert violations(module, source, KNOWN) == []


def test_the_checker_places_every_module_and_reports_unplaced_ones():
    assert place("omnifast.model.rays") == ("model", "model")
    assert place("omnifast._C") == ("kernels", "csrc")
    assert place("omnifast.somewhere_new") is None
    assert "no layer" in violations("omnifast.somewhere_new", "", KNOWN)[0]
    assert third_party("import os\nimport cv2\nfrom numpy import array\n") == {"cv2", "numpy"}

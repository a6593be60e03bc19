"""The package's layers as DESIGN.md draws them: data -> methods -> engine -> store -> report.

Each layer is imported in a fresh interpreter and `sys.modules` is checked for modules of the
layers it must not reach; the source is also read, so an import hidden inside a function counts.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import xbench
from xbench.cli import app
from xbench.config import load_config
from xbench.engine.evaluate import evaluate

PACKAGE = Path(xbench.__file__).parent
UPPER = ("xbench.train", "xbench.engine", "xbench.report", "xbench.quickstart", "xbench.cli")
HEAVY = ("timm", "pytorch_grad_cam", "captum", "torch")


def _modules_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _reached(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


@pytest.mark.slow  # a subprocess per layer
@pytest.mark.parametrize("layer", ["xbench.datasets", "xbench.methods", "xbench.metrics"])
def test_lower_layers_import_nothing_above_them(layer):
    assert _reached(_modules_after(f"import {layer}"), UPPER) == []


def _imports_of(path: Path) -> list[str]:
    """Absolute names of every xbench module a file imports, at any depth of its code."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                names += [".".join(base + ([node.module] if node.module else []) + ([a.name] if not node.module else []))
                          for a in node.names]
            elif node.module:
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n.startswith("xbench")]


@pytest.mark.parametrize("layer", ["datasets", "methods", "metrics"])
def test_no_function_of_a_lower_layer_imports_an_upper_one(layer):
    offending = {str(path.relative_to(PACKAGE)): _reached(set(_imports_of(path)), UPPER)
                 for path in (PACKAGE / layer).glob("*.py")}
    assert {k: v for k, v in offending.items() if v} == {}


def test_data_and_metrics_know_no_models():
    """A metric sees an nn.Module and a callable explainer, never a model family; data knows neither."""
    reached = {str(path.relative_to(PACKAGE)): _reached(set(_imports_of(path)), forbidden)
               for layer, forbidden in (("datasets", ("xbench.methods", "xbench.metrics", "xbench.factory")),
                                        ("metrics", ("xbench.methods", "xbench.factory")))
               for path in (PACKAGE / layer).glob("*.py")}
    assert {k: v for k, v in reached.items() if v} == {}


def _package_files(under: str = "") -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py"))


def _names_from_the_root(path: Path) -> list[str]:
    """What a file takes from the package root (`from .. import x`, `import xbench`) instead of its module."""
    def is_module(name: str) -> bool:
        parts = name.split(".")[1:]
        return (PACKAGE.joinpath(*parts).with_suffix(".py").exists() or PACKAGE.joinpath(*parts).is_dir())
    return [n for n in _imports_of(path) if n == "xbench" or (n.count(".") == 1 and not is_module(n))]


def test_no_module_imports_the_package_root():
    # The root only re-exports; a module that imports it depends on everything the root imports.
    offending = {str(p.relative_to(PACKAGE)): _names_from_the_root(p) for p in _package_files()
                 if p != PACKAGE / "__init__.py"}
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_engine_never_imports_the_reports():
    offending = {str(p.relative_to(PACKAGE)): _reached(set(_imports_of(p)), ("xbench.report",))
                 for p in _package_files("engine")}
    assert {k: v for k, v in offending.items() if v} == {}


@pytest.mark.slow  # a subprocess
def test_reports_never_reach_the_engine_or_the_models():
    offending = {str(path.relative_to(PACKAGE)): _reached(set(_imports_of(path)),
                                                          ("xbench.engine", "xbench.methods", "xbench.metrics"))
                 for path in (PACKAGE / "report").glob("*.py")}
    # The store is the layer reports read; nothing else of the engine.
    assert {k: [m for m in v if m != "xbench.engine.store"] for k, v in offending.items()} == {
        k: [] for k in offending}
    assert _reached(_modules_after("import xbench.report"), ("xbench.engine.evaluate", "xbench.engine.scoring",
                                                             "xbench.methods", "xbench.metrics") + HEAVY) == []


@pytest.mark.slow  # a subprocess
def test_leaderboard_command_reads_only_the_store(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    run = evaluate(load_config([], overrides + ["evaluate.methods=gradcam,random"]), out=base / "layers_run",
                   progress=False)
    code = ("from xbench.cli import app\n"
            "try:\n"
            f"    app([\"leaderboard\", {str(run)!r}, \"--format\", \"md\", \"--out\", {str(tmp_path)!r}])\n"
            "except SystemExit as exit:\n"
            "    assert not exit.code, exit.code")
    modules = _modules_after(code)
    assert _reached(modules, HEAVY + ("xbench.methods", "xbench.metrics", "xbench.engine.evaluate")) == []
    assert "gradcam@cnn" in (tmp_path / "leaderboard.md").read_text()
    # The in-process command gives the same table.
    result = CliRunner().invoke(app, ["leaderboard", str(run), "--format", "md", "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "leaderboard.md").read_text() == (tmp_path / "leaderboard.md").read_text()

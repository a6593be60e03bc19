"""The registry and third-party plugin discovery through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from xbench.registry import ExplainerSpec, Registry, UnknownNameError


def test_register_get_and_describe():
    reg = Registry("widget", ExplainerSpec)

    @reg.register("b", description="the b widget", models="cnn")
    def make_b():
        return "b"

    @reg.register("a")
    def make_a():
        """First line of the docstring.

        More text."""
        return "a"

    assert reg.names() == ["a", "b"]
    assert reg.build("b") == "b"
    assert reg.get("a").description == "First line of the docstring."
    assert reg.get("b").spec == ExplainerSpec(models="cnn") and reg.get("a").spec == ExplainerSpec()
    assert "a" in reg and "c" not in reg
    with pytest.raises(TypeError, match="register widget 'c': unknown option\\(s\\) famly; a widget takes models"):
        reg.register("c", famly="x")


def test_unknown_name_lists_the_known_ones_and_duplicates_raise():
    reg = Registry("widget")
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    with pytest.raises(UnknownNameError, match="unknown widget 'gamma'; known widgets: alpha, beta"):
        reg.get("gamma")
    with pytest.raises(ValueError, match="widget 'alpha' is already registered"):
        reg.register("alpha")(lambda: 3)


@pytest.mark.slow
def test_plugin_package_appears_in_xbench_list(tmp_path):
    """A plugin installed as a distribution with an `xbench.methods` entry point is discovered."""
    pkg = tmp_path / "xbench_toyplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from xbench.registry import register_model

        @register_model("toynet", description="a plugin model from outside xbench")
        def build_toynet(num_classes, width=4):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))
    '''))
    dist = tmp_path / "xbench_toyplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xbench-toyplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[xbench.methods]\ntoy = xbench_toyplugin\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "xbench.cli", "list", "models"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "toynet" in out and "a plugin model from outside xbench" in out
    code = "import xbench; m = xbench.build_model('toynet', num_classes=3, width=2); print(type(m).__name__)"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "Sequential"


@pytest.mark.slow  # a subprocess
def test_broken_plugin_is_reported_not_fatal(tmp_path):
    dist = tmp_path / "broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[xbench.methods]\nbroken = no_such_module_anywhere\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "xbench.cli", "list"], env=env, capture_output=True, text=True)
    assert run.returncode == 0
    assert "plugin 'broken'" in run.stderr and "failed to load" in run.stderr


def test_every_built_in_metric_and_column_is_documented_in_docs_metrics():
    from pathlib import Path

    from xbench.registry import METRICS

    docs = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    built_in = [METRICS.get(name) for name in METRICS.names()
                if METRICS.get(name).factory.__module__.startswith("xbench.")]
    assert len(built_in) > 40
    missing = [e.name for e in built_in if f"`{e.name}`" not in docs]
    missing += [f"{e.name}.{c}" for e in built_in for c in e.spec.columns if f"`{c}`" not in docs
                and c != e.name]
    assert missing == [], f"not in docs/metrics.md: {missing}"


@pytest.mark.slow  # a subprocess
def test_the_readme_extending_examples_run_as_written(tmp_path):
    """The README's worked explainer and metric, and the call that uses them, run in a fresh interpreter."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 3
    script = tmp_path / "extending.py"
    script.write_text("\n".join(blocks) + textwrap.dedent("""
        rows = result.rows.set_index("method")
        assert {"squared_gradient@model", "gradcam@model"} <= set(rows.index)
        assert ((rows["centre_mass"] >= 0) & (rows["centre_mass"] <= 1)).all()
        assert "centre_mass" in xbench.list_metrics() and "squared_gradient" in xbench.list_explainers()
        print("extending ok")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "extending ok" in out.stdout

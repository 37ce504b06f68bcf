"""Packaging: every package folder is installed, pipelines/ as medgan.pipelines (no top-level
"pipelines" in site-packages), and the library never imports the pipelines."""

import ast
import tomllib

from tests.conftest import ROOT


def _package_folders() -> set[str]:
    found = set()
    for top, name in (("medgan", "medgan"), ("pipelines", "medgan.pipelines")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    return found


def test_pyproject_lists_every_package_under_the_medgan_namespace():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(tool["packages"]) == _package_folders()
    assert tool["package-dir"] == {"medgan.pipelines": "pipelines"}
    assert not any(p.split(".")[0] != "medgan" for p in tool["packages"])


def test_the_library_never_imports_the_pipelines():
    # medgan/__init__.py (the lazy public API) and __main__.py (the command) are the entry points
    offenders = []
    for path in (ROOT / "medgan").rglob("*.py"):
        if path.relative_to(ROOT / "medgan").as_posix() in ("__init__.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in mods if m.split(".")[:2] == ["medgan", "pipelines"]
                          or m.split(".")[0] == "pipelines"]
    assert not offenders, offenders

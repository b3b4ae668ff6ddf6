"""Which modules of ``custom`` an exported bundle ships: those its configs name, with everything they import."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

__all__ = ["code_modules", "copy_code"]

_CUSTOM_MODULE = re.compile(r"(?<![\w@'\"])custom\.(\w+)")
# always needed: the exported configs read every weight file through custom.weights
ALWAYS = ("weights",)
NEVER = ("packaging",)  # this package: exporting is no part of an exported bundle


def _imports_of(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("custom.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "custom":
                found |= {a.name for a in node.names}
            elif node.module.startswith("custom."):
                found.add(node.module.split(".")[1])
    return found


def _sources(package: Path, module: str) -> list[Path]:
    """The files of ``custom.<module>``: one ``.py`` file, or every ``.py`` file of a subpackage."""
    single = package / f"{module}.py"
    return [single] if single.is_file() else sorted((package / module).rglob("*.py"))


def _available(package: Path) -> set[str]:
    modules = {p.stem for p in package.glob("*.py")} | {p.parent.name for p in package.glob("*/__init__.py")}
    return modules - {"__init__", *NEVER}


def code_modules(config_texts: list[str], package: Path | None = None, extra: tuple[str, ...] = ALWAYS) -> list[str]:
    """The modules and subpackages of ``custom`` that configs naming ``custom.<module>`` need, with ``extra`` and
    everything they import (this package never)."""
    package = package or Path(__file__).resolve().parents[1]
    available = _available(package)
    wanted = {m for text in config_texts for m in _CUSTOM_MODULE.findall(text)} | set(extra)
    wanted = (wanted | _imports_of((package / "__init__.py").read_text())) & available
    todo, done = sorted(wanted), set()
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        for source in _sources(package, module):
            todo.extend(m for m in _imports_of(source.read_text()) if m in available)
    return sorted(done)


def copy_code(config_texts: list[str], target: Path, extra: tuple[str, ...] = ALWAYS) -> list[str]:
    """Copy ``custom/__init__.py`` and the modules the configs need into ``target``; returns the modules."""
    package = Path(__file__).resolve().parents[1]
    modules = code_modules(config_texts, package, extra)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package / "__init__.py", target / "__init__.py")
    for module in modules:
        for source in _sources(package, module):
            (target / source.relative_to(package)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / source.relative_to(package))
    return modules

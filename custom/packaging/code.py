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


def code_modules(config_texts: list[str], package: Path | None = None, extra: tuple[str, ...] = ALWAYS) -> list[str]:
    """The modules of ``custom`` (its top-level ``.py`` files) that configs naming ``custom.<module>`` need, with
    ``extra`` and everything they import; subpackages (this one included) are never shipped."""
    package = package or Path(__file__).resolve().parents[1]
    available = {p.stem for p in package.glob("*.py")} - {"__init__"}
    wanted = {m for text in config_texts for m in _CUSTOM_MODULE.findall(text)} | set(extra)
    wanted = (wanted | _imports_of((package / "__init__.py").read_text())) & available
    todo, done = sorted(wanted), set()
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        todo.extend(m for m in _imports_of((package / f"{module}.py").read_text()) if m in available)
    return sorted(done)


def copy_code(config_texts: list[str], target: Path, extra: tuple[str, ...] = ALWAYS) -> list[str]:
    """Copy ``custom/__init__.py`` and the modules the configs need into ``target``; returns the modules."""
    package = Path(__file__).resolve().parents[1]
    modules = code_modules(config_texts, package, extra)
    target.mkdir(parents=True, exist_ok=True)
    for module in ["__init__", *modules]:
        shutil.copyfile(package / f"{module}.py", target / f"{module}.py")
    return modules

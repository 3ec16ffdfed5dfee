"""Load only the SDK types and resources a worker uses.

The Anthropic and OpenAI SDKs re-export every type and resource from package
``__init__`` files that hold nothing but ``from .module import Name`` lines, so
``import anthropic`` executes about 3,000 modules, two thirds of them beta types a worker
never touches, and holds ~64 MB (Anthropic and OpenAI together) in code objects and
classes.

:func:`install` puts a finder in front of the import system for the packages under
:data:`PACKAGES`. A package whose ``__init__`` is only re-exports (a docstring,
``from __future__``, relative ``from`` imports without ``*``, and an ``__all__`` list)
becomes a module that imports a name's module the first time the name is read (PEP 562
``__getattr__``) and then keeps it; its submodules stay importable and readable as
attributes, as before. Any package whose ``__init__`` does anything else is loaded as
written. The objects are the same objects from the same modules, so the SDKs behave as
they do without it; what nothing reads is never loaded.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

PACKAGES: Final = ("anthropic.types", "anthropic.resources", "openai.types", "openai.resources")


@dataclass(frozen=True, slots=True)
class ReExports:
    """A package ``__init__`` read as a table: exported name -> (module, attribute). The
    module is relative to the package; ``None`` means the name is itself a submodule
    (``from . import name``)."""

    names: dict[str, tuple[str | None, str]]
    all: tuple[str, ...] | None


def read_reexports(source: str) -> ReExports | None:
    """The table of a package ``__init__`` made only of re-exports, or ``None`` when it
    does anything else (then it must run as written)."""
    names: dict[str, tuple[str | None, str]] = {}
    exported: tuple[str, ...] | None = None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "__future__":
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if any(alias.name == "*" for alias in node.names):
                return None
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
            continue
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "__all__"
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                return None
            exported = tuple(value)
            continue
        return None
    return ReExports(names, exported)


def _under(name: str, packages: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


class ReExportFinder(importlib.abc.MetaPathFinder):
    """Finds the re-export-only packages under ``packages``; leaves everything else to the
    import system's own finders."""

    def __init__(self, packages: Sequence[str] = PACKAGES) -> None:
        self.packages = tuple(packages)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not _under(fullname, self.packages):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        # What the path finder found is what the import system would load; only a
        # re-export-only package gets another loader.
        if spec is None or spec.submodule_search_locations is None or spec.origin is None:
            return spec
        origin = Path(spec.origin)
        if origin.name != "__init__.py":
            return spec
        try:
            table = read_reexports(origin.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return spec
        if table is not None:
            spec.loader = ReExportLoader(table)
        return spec


class ReExportLoader(importlib.abc.Loader):
    """Makes a package module whose exported names are imported on first read."""

    def __init__(self, table: ReExports) -> None:
        self.table = table

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        package = module.__name__
        names = self.table.names
        if self.table.all is not None:
            module.__dict__["__all__"] = list(self.table.all)

        def module_getattr(name: str) -> object:
            if name.startswith("__"):
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            source = names.get(name)
            value: object
            if source is None:
                value = _submodule(package, name)  # read as an attribute, as after a full init
            elif source[0] is None:
                value = importlib.import_module(f"{package}.{source[1]}")
            else:
                owner = importlib.import_module(f"{package}.{source[0]}")
                try:
                    value = getattr(owner, source[1])
                except AttributeError:
                    value = importlib.import_module(f"{package}.{source[0]}.{source[1]}")
            module.__dict__[name] = value
            return value

        def module_dir() -> list[str]:
            return sorted(set(module.__dict__) | set(names))

        module.__dict__["__getattr__"] = module_getattr
        module.__dict__["__dir__"] = module_dir


def _submodule(package: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{package}.{name}":
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        raise


def install(packages: Sequence[str] = PACKAGES) -> None:
    """Put the finder first on ``sys.meta_path`` (once; ``alchemy.providers`` calls it while
    the import system holds its lock). Packages already imported stay as they are; call
    this before the SDKs are imported."""
    if not any(isinstance(f, ReExportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ReExportFinder(packages))

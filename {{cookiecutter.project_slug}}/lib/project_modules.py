"""Which imported modules are the project's own, and dropping those a test imported.

A project module imported during a test keeps its globals (a client, a cache, a registry)
into the next test; dropped from ``sys.modules``, it starts afresh at its next import. The
isolation core, the standard library and installed packages are never dropped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["CORE_MODULES", "ProjectModules", "drop_modules"]

# The isolation core itself, every module of this package, is never dropped.
CORE_MODULES = frozenset(
    {__package__ or ""}
    | {f"{__package__}.{path.stem}" for path in Path(__file__).parent.glob("[!_]*.py")}
)

_CORE_PREFIX = f"{Path(__file__).resolve().parent}{os.sep}"

# Paths inside the project that hold installed packages, not project modules.
_NOT_PROJECT = tuple(
    f"{os.sep}{name}{os.sep}"
    for name in (".nox", ".venv", "venv", ".tox", "site-packages", "dist-packages")
)

ModulesState = tuple[int, str | None]


def _modules_state() -> ModulesState:
    """What every import changes: the number of modules and the newest one (an import adds
    its name last, so removing one module and importing another changes it too)."""
    return len(sys.modules), next(reversed(sys.modules), None)


class ProjectModules:
    """The project's modules among those imported: those whose file lies in ``root``, or
    with ``patterns`` those whose name matches one of these fnmatch patterns (and, with
    ``and_root``, those in ``root`` too). Answers are cached until ``sys.modules``
    changes, which between most tests it does not."""

    def __init__(
        self, root: Path, patterns: Iterable[str] | None = None, *, and_root: bool = False
    ) -> None:
        self.patterns = tuple(patterns) if patterns is not None else None
        self._and_root = and_root or patterns is None
        self._root_prefix = f"{root}{os.sep}"
        self._known: dict[str, bool] = {}
        self._current: tuple[ModulesState, list[str]] = ((0, None), [])
        self._last_snapshot: frozenset[str] = frozenset()
        self._last_snapshot_state: ModulesState = (0, None)

    def snapshot(self) -> frozenset[str]:
        """The names of the modules imported so far (the last snapshot again while no module
        was imported or removed since)."""
        state = _modules_state()
        if state != self._last_snapshot_state:
            self._last_snapshot = frozenset(sys.modules)
            self._last_snapshot_state = state
        return self._last_snapshot

    def imported_since(self, snapshot: frozenset[str]) -> list[str]:
        """Project modules imported since ``snapshot``."""
        if snapshot is self._last_snapshot and _modules_state() == self._last_snapshot_state:
            return []  # nothing imported or removed since (the common case)
        return [name for name in sys.modules.keys() - snapshot if self._is_project(name)]

    def current(self) -> list[str]:
        """Project modules now imported."""
        state = _modules_state()
        seen, names = self._current
        if seen != state:
            names = [name for name in list(sys.modules) if self._is_project(name)]
            self._current = (state, names)
        return names

    def is_project_file(self, filename: str) -> bool:
        """A file of the project's own code (not of a virtual environment in it, nor of the
        isolation core, whose threads serve every test)."""
        return (
            filename.startswith(self._root_prefix)
            and not filename.startswith(_CORE_PREFIX)
            and not any(part in filename for part in _NOT_PROJECT)
        )

    def _is_project(self, name: str) -> bool:
        known = self._known.get(name)
        if known is None:
            known = name not in CORE_MODULES and self._matches(name)
            self._known[name] = known
        return known

    def _matches(self, name: str) -> bool:
        """Project code only: never a built-in, stdlib or installed third-party module."""
        filename: str | None = getattr(sys.modules.get(name), "__file__", None)
        if (
            not filename
            or name.partition(".")[0] in sys.stdlib_module_names
            or any(part in filename for part in _NOT_PROJECT)
        ):
            return False
        if self.patterns is not None and any(fnmatchcase(name, p) for p in self.patterns):
            return True
        return self._and_root and filename.startswith(self._root_prefix)


def drop_modules(names: Iterable[str]) -> None:
    """Drop the modules ``names`` from ``sys.modules`` and from the packages they are
    attributes of, which ``from package import module`` would otherwise still find."""
    for name in names:
        module = sys.modules.pop(name, None)
        package_name, _, attribute = name.rpartition(".")
        package = sys.modules.get(package_name) if package_name else None
        if package is not None and module is not None and vars(package).get(attribute) is module:
            delattr(package, attribute)

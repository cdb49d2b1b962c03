"""Finds the module globals that still hold a test's database client after its scope ended,
or a closed sqlite3 connection.

A client kept in a global (``db = get_database_client()`` at import time, a registry, a
class attribute) is the root cause of ``CLIENT_CLOSED`` in a later test; naming that global
is what lets the developer fix it. The search decides by types alone and reads namespaces
with the built-in types' own methods, so that none of the project's code runs (a lazy
proxy's factory, a dict subclass's ``items()``) and nothing raises.
"""

from __future__ import annotations

import reprlib
import sqlite3
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from typing import cast

from .async_database import AsyncDatabaseClient
from .database import DatabaseClient

__all__ = [
    "SEARCHED_ITEMS",
    "closed_clients_held",
    "closed_connections_held",
    "globals_holding",
    "stale_warning",
]

# The most items of a container in a module global the search looks at.
SEARCHED_ITEMS = 10_000
# The C-level getters of a module's and a class's namespace: no code of theirs runs.
_MODULE_DICT = vars(types.ModuleType)["__dict__"]
_CLASS_DICT = vars(type)["__dict__"]


def globals_holding(
    modules: Iterable[str], clients: Iterable[DatabaseClient], *, inside: bool = False
) -> list[str]:
    """The globals of ``modules`` (``module.attribute``) that hold one of ``clients``, or
    an async wrapper of one. ``inside``: also one level inside them (see
    :func:`_places_holding`), for clients still alive after their test, which something
    holds (37 µs for a module of 42 globals and two classes, where the globals alone take
    5 µs)."""
    stale_ids = {id(client) for client in clients}
    found: list[str] = []
    for name in modules:
        namespace = _namespace(name)
        values = list(dict.values(namespace))
        if (
            not inside
            and stale_ids.isdisjoint(map(id, values))
            and AsyncDatabaseClient not in map(type, values)
        ):
            continue  # the common case, checked at C speed
        for attribute, value in list(dict.items(namespace)):
            if not attribute.startswith("__"):  # __builtins__ and the like
                found += _places_holding(
                    f"{name}.{attribute}", value, name, stale_ids, inside=inside
                )
    return found


def _namespace(name: str) -> dict[str, object]:
    """The globals of the module ``name``, read without running its code: nothing for an
    object that stands in for a module in ``sys.modules`` (a settings object)."""
    module = sys.modules.get(name)
    if not issubclass(type(module), types.ModuleType):
        return {}
    namespace: dict[str, object] = _MODULE_DICT.__get__(module)
    return namespace


def closed_connections_held(modules: Iterable[str]) -> list[str]:
    """The globals of ``modules`` that hold a closed ``sqlite3`` connection, or one level
    inside them: what a test failing with "Cannot operate on a closed database" used, kept
    from the database module that a reset made reconnect (``_conn = db.connection()`` at
    import)."""
    return _globals_holding_what(modules, _is_closed_connection)


def closed_clients_held(modules: Iterable[str]) -> list[str]:
    """The globals of ``modules`` that hold a closed database client (or an async wrapper
    of one), or one level inside them: what a test failing with CLIENT_CLOSED used, kept
    from an earlier test (``_client = _client or get_database_client()``)."""
    return _globals_holding_what(modules, _is_closed_client)


def _globals_holding_what(modules: Iterable[str], what: Callable[[object], bool]) -> list[str]:
    found: list[str] = []
    for name in modules:
        for attribute, value in list(dict.items(_namespace(name))):
            if not attribute.startswith("__"):
                places = _places(f"{name}.{attribute}", value, name, inside=True)
                found += [place for place, item in places if what(item)]
    return found


def _is_closed_client(value: object) -> bool:
    client = _unwrapped(value)
    return issubclass(type(client), DatabaseClient) and cast(DatabaseClient, client).closed


def _is_closed_connection(value: object) -> bool:
    if not issubclass(type(value), sqlite3.Connection):
        return False
    try:  # sqlite3's own attribute, which raises once the connection is closed
        sqlite3.Connection.total_changes.__get__(value)
    except sqlite3.ProgrammingError:
        return True
    return False


def stale_warning(binding: str, owner: str) -> str:
    """What to tell the developer about a global that holds the client of ``owner``."""
    return (
        f"{binding} still holds the database client of {owner}; using it later raises "
        "ClientClosedError. Ask for the client where it is used (get_database_client() at "
        "call time) instead of keeping it."
    )


def _places_holding(
    where: str, value: object, module: str, stale_ids: set[int], *, inside: bool
) -> Iterator[str]:
    """Where ``value`` holds one of the clients ``stale_ids`` (or an async wrapper of one):
    itself, and with ``inside`` one level down (see :func:`_places`)."""
    for place, item in _places(where, value, module, inside=inside):
        if id(_unwrapped(item)) in stale_ids:
            yield place


def _places(
    where: str, value: object, module: str, *, inside: bool
) -> Iterator[tuple[str, object]]:
    """``value`` at ``where`` and, with ``inside``, each of its items one level down: the
    attributes of a class ``module`` defines and of an instance of one, a dict's values, a
    list's or tuple's items (not those of one of more than :data:`SEARCHED_ITEMS`: a table
    of data, not a registry). Read with the built-in types' own methods: a subclass's
    ``items()`` or ``__getattr__`` never runs."""
    yield where, value
    if not inside:
        return
    kind = type(value)
    if issubclass(kind, type) and _defined_in(cast("type", value), module):
        for name, item in list(_CLASS_DICT.__get__(value).items()):
            yield f"{where}.{name}", item
    elif issubclass(kind, dict):
        mapping = cast("dict[object, object]", value)
        if dict.__len__(mapping) <= SEARCHED_ITEMS:
            for key, item in list(dict.items(mapping)):
                shown = reprlib.repr(key) if type(key) in (str, int) else type(key).__name__
                yield f"{where}[{shown}]", item
    elif kind is list or kind is tuple:
        items = cast("Sequence[object]", value)
        if len(items) <= SEARCHED_ITEMS:
            for index, item in enumerate(list(items)):
                yield f"{where}[{index}]", item
    elif _defined_in(kind, module) and kind.__getattribute__ is object.__getattribute__:
        with suppress(AttributeError, TypeError):  # __slots__: no __dict__
            attributes = object.__getattribute__(value, "__dict__")
            if type(attributes) is dict:
                for name, item in list(dict.items(attributes)):
                    yield f"{where}.{name}", item


def _defined_in(kind: type, module: str) -> bool:
    return bool(_CLASS_DICT.__get__(kind).get("__module__") == module)


def _unwrapped(value: object) -> object:
    """The client an async wrapper wraps, or ``value``."""
    return value.client if type(value) is AsyncDatabaseClient else value

"""Where the time of a fresh database goes: each step timed on its own, without pytest.

The floor under the ``bare-file`` and ``bare-memory`` modes of the benchmark: SQLite's
own cost of making, using and removing a fresh copy of the template, next to the same
work on one connection that stays open. No isolation code runs here.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.suites import TABLE
from lib.database import delete_database_files
from lib.scope_databases import (
    MEMORY_PRAGMAS,
    SCOPE_PRAGMAS,
    Template,
    discard_database,
    memory_url,
)

# The work of each generated benchmark test: one insert and one count.
INSERT = f"INSERT INTO {TABLE} (label) VALUES (?)"
COUNT = f"SELECT count(*) FROM {TABLE}"

Steps = dict[str, float]


class _Clock:
    """Adds up the time of each named step over many iterations."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter_ns()
        yield
        elapsed = time.perf_counter_ns() - started
        self.totals[name] = self.totals.get(name, 0) + elapsed

    def means_us(self, iterations: int) -> Steps:
        return {name: total / iterations / 1000 for name, total in self.totals.items()}


def _connect(database: str) -> sqlite3.Connection:
    return sqlite3.connect(database, isolation_level=None, uri=database.startswith("file:"))


def _set_pragmas(conn: sqlite3.Connection, pragmas: Mapping[str, str]) -> None:
    for name, value in pragmas.items():
        conn.execute(f"PRAGMA {name}={value}")


def _work(conn: sqlite3.Connection, number: int) -> None:
    conn.execute(INSERT, [f"step {number}"])
    conn.execute(COUNT).fetchone()


def _use_and_close(
    clock: _Clock,
    conn: sqlite3.Connection,
    number: int,
    *,
    pragmas: Mapping[str, str],
    labels: tuple[str, str, str],
    path: Path | None = None,
) -> None:
    """What every fresh database goes through once it is open, each step under its label
    (pragmas, work, close); a file's database is closed and deleted as the plugin does it."""
    first, work, close = labels
    with clock.step(first):
        _set_pragmas(conn, pragmas)
    with clock.step(work):
        _work(conn, number)
    with clock.step(close):
        discard_database(path, conn.close)


def _file_steps(clock: _Clock, template: Template, directory: Path, number: int) -> None:
    path = directory / f"steps-{number}.db"
    with clock.step("copy the template"):
        template.copy_to(path)
    with clock.step("connect"):
        conn = _connect(str(path))
    _use_and_close(
        clock,
        conn,
        number,
        pragmas=SCOPE_PRAGMAS,
        labels=(
            "pragmas (the first statement reads the schema, opens WAL and -shm)",
            "the test's insert and count",
            "delete the files, then close (no checkpoint: the database is gone)",
        ),
        path=path,
    )


def _memory_steps(clock: _Clock, template: Template, number: int) -> None:
    with clock.step("connect"):
        conn = _connect(memory_url(f"steps-{number}"))
    with clock.step("copy the template in (backup)"):
        template.in_memory.backup(conn)
    _use_and_close(
        clock,
        conn,
        number,
        pragmas=MEMORY_PRAGMAS,
        labels=(
            "foreign keys on",
            "the test's insert and count (the first statement reads the schema)",
            "close",
        ),
    )


def time_steps(template: Template, directory: Path, iterations: int) -> dict[str, Steps]:
    """Mean microseconds of each step, per strategy, and of the same work on one connection
    kept open (what the baseline does per test).

    The three are interleaved, one iteration of each in turn, so a slow spell of the
    machine falls on all of them alike.
    """
    clocks = {"file": _Clock(), "memory": _Clock(), "shared": _Clock()}
    numbers = itertools.count()
    shared_path = directory / "steps-shared.db"
    template.copy_to(shared_path)
    shared = _connect(str(shared_path))
    try:
        _set_pragmas(shared, SCOPE_PRAGMAS)
        _file_steps(_Clock(), template, directory, next(numbers))  # warm up, not counted
        _memory_steps(_Clock(), template, next(numbers))
        _work(shared, next(numbers))
        for _ in range(iterations):
            _file_steps(clocks["file"], template, directory, next(numbers))
            _memory_steps(clocks["memory"], template, next(numbers))
            with clocks["shared"].step("the same work on one open connection"):
                _work(shared, next(numbers))
    finally:
        shared.close()
        delete_database_files(shared_path)
    return {name: clock.means_us(iterations) for name, clock in clocks.items()}


def floor_us(steps: Mapping[str, Steps], strategy: str) -> float:
    """SQLite's own cost of a fresh database per test over the shared connection."""
    return sum(steps[strategy].values()) - sum(steps["shared"].values())


def steps_table(steps: Mapping[str, Steps]) -> str:
    """The steps as Markdown, with each strategy's total and its floor over the baseline."""
    shared = sum(steps["shared"].values())
    lines = ["| strategy | step | µs |", "|---|---|---:|"]
    for strategy in ("file", "memory"):
        for name, micros in steps[strategy].items():
            lines.append(f"| {strategy} | {name} | {micros:.1f} |")
        total = sum(steps[strategy].values())
        floor = floor_us(steps, strategy)
        lines.append(f"| {strategy} | **total** | **{total:.1f}** |")
        lines.append(f"| {strategy} | **over the shared connection** | **{floor:+.1f}** |")
    lines.append(f"| shared | the same work on one open connection | {shared:.1f} |")
    return "\n".join(lines)
